#!/usr/bin/env bash
# The tiny paper pipeline end to end on 2 ranks (jobs/tiny.yaml): demo corpora
# -> tokenizer -> token stores -> base -> two fine-tunes -> SLERP merge ->
# activations -> SAEs. Checks real effects (each fine-tune improves its own
# domain; the merge lies between them), resumption (a rerun skips everything),
# and experiment.h5's links.
set -u
bin=${ML_BIN:?}; src=${ML_SRC:?}; mpiexec=${ML_MPIEXEC:-mpiexec}
. "${ML_SRC:?}/tests/common/ml_check.sh"
ml_run_tiny_job tiny "$src/jobs/tiny.yaml"
for f in sweeps/slerp.h5 tracking/summary.h5 data/tokenizer.h5 data/stories.h5 data/lua.h5 models/base.h5 models/stories.h5 models/lua.h5 models/merge.h5 \
         acts/base.h5 acts/merge.h5 saes/base.h5 saes/stories.h5 saes/lua.h5 saes/merge.h5 experiment.h5; do
  check "output $f exists" test -f "$run/$f"
done
loss() { "$bin" eval "$run/models/$1.h5" --domains "$run/data/$2.h5" 2>/dev/null | awk -v d="$2" '$1==d {print $2}'; }
base_st=$(loss base stories) st_st=$(loss stories stories) lua_st=$(loss lua stories) m_st=$(loss merge stories)
base_lua=$(loss base lua) lua_lua=$(loss lua lua) st_lua=$(loss stories lua) m_lua=$(loss merge lua)
echo "stories loss: base $base_st, stories $st_st, lua $lua_st, merge $m_st"
echo "lua loss:     base $base_lua, lua $lua_lua, stories $st_lua, merge $m_lua"
lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }
check "stories fine-tune improves stories loss over base" lt "$st_st" "$base_st"
check "lua fine-tune improves lua loss over base" lt "$lua_lua" "$base_lua"
check "merge is better than the lua model on stories" lt "$m_st" "$lua_st"
check "merge is better than the stories model on lua" lt "$m_lua" "$st_lua"
"$bin" export hf "$run/models/stories.h5" "$tmp/hf" > "$tmp/export.log" 2>&1
check "export hf writes the stores' tokenizer as tokenizer.json" test -s "$tmp/hf/tokenizer.json"
"$bin" tokenizer export --in "$run/data/tokenizer.h5" --out "$tmp/direct.json" > /dev/null 2>&1
check "exported tokenizer.json equals the tokenizer's own export" cmp -s "$tmp/hf/tokenizer.json" "$tmp/direct.json"
ins=$("$bin" inspect "$run/experiment.h5" 2>/dev/null)
check "experiment.h5: all 26 stages done" bash -c "[ \$(grep -c '@status = \"done\"' <<<\"\$0\") -eq 26 ]" "$ins"
check "experiment.h5 links the merged model" bash -c "'$bin' inspect '$run/experiment.h5' 2>/dev/null | grep -q 'outputs'"
if command -v h5ls >/dev/null; then
  check "external link resolves (h5ls)" bash -c "cd '$run' && h5ls experiment.h5/outputs/merge/merge/params 2>/dev/null | grep -q lm_head.weight"
fi
py=""
for c in /usr/bin/python3 python3; do "$c" -c "import h5py, matplotlib" 2>/dev/null && { py=$c; break; }; done
if [ -n "$py" ]; then
  "$py" "$src/analysis/report.py" "$run" > "$tmp/report.log" 2>&1; rc=$?
  check "report builds from the tiny run" test $rc -eq 0 -a -f "$run/report/index.html"
  check "report has training curves and SAE metrics" bash -c "grep -q 'Training and fine-tuning curves' '$run/report/index.html' && ls '$run'/report/*.png >/dev/null"
  check "report has the track-sweep figure" grep -q "still present along the merge sweep (track-sweep)" "$run/report/index.html"
  # the h5py snippet of docs/FORMAT.md runs as written (paths pointed at this run)
  awk '/^## Reading the files from Python/{f=1} f&&/^```python/{p=1;next} p&&/^```/{exit} p' "$src/docs/FORMAT.md" \
    | sed "s#runs/tiny#$run#g" > "$tmp/snippet.py"
  printf 'assert state_dict["lm_head.weight"].shape == (config["vocab_size"], config["hidden_size"])\n' >> "$tmp/snippet.py"
  printf 'assert W_enc.shape == (W_dec.shape[1], W_dec.shape[0]) and b_dec.shape == (W_dec.shape[1],)\n' >> "$tmp/snippet.py"
  (cd "$tmp" && "$py" snippet.py) > "$tmp/snippet.log" 2>&1; rc=$?
  check "FORMAT.md h5py snippet runs on the tiny run" test $rc -eq 0 -a -s "$tmp/snippet.py"
  [ $rc -eq 0 ] || cat "$tmp/snippet.log"
  printf 'import h5py\nf = h5py.File("%s/experiment.h5", "r")\nassert "lm_head.weight" in f["outputs/merge/merge/params"]\n' "$run" > "$tmp/links.py"
  (cd / && "$py" "$tmp/links.py") > "$tmp/links.log" 2>&1; rc=$?
  check "experiment.h5 external links open in h5py from another directory" test $rc -eq 0
  [ $rc -eq 0 ] || cat "$tmp/links.log"
else
  echo "skip report check: no python3 with h5py and matplotlib"
fi
"${mpi[@]}" "$bin" run "$src/jobs/tiny.yaml" --out "$run" > "$tmp/rerun.log" 2>&1; rc=$?
check "rerun succeeds" test $rc -eq 0
check "rerun skips all 26 complete stages" bash -c "[ \$(grep -c 'complete, skipped' '$tmp/rerun.log') -eq 26 ]"
rm -rf "$tmp"
echo "tiny pipeline: $pass passed, $fail failed"
[ $fail -eq 0 ]
