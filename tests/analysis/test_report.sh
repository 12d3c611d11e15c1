#!/usr/bin/env bash
# analysis: report.py builds RUN_DIR/report/index.html from a synthetic run directory in the
# documented layouts; every figure it references is a valid, non-blank PNG; missing files give
# notes; a malformed file fails only its section; the tokenizer reader decodes token bytes.
set -u
here=$(cd "$(dirname "$0")" && pwd)
src=${ML_SRC:-$(cd "$here/../.." && pwd)}
py=""
for c in ${ML_PYTHON:-} /usr/bin/python3 python3; do
  if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import h5py, numpy, matplotlib' >/dev/null 2>&1; then py=$c; break; fi
done
if [ -z "$py" ]; then
  echo "skip: no python3 with h5py, numpy and matplotlib (Debian: apt-get install python3-h5py python3-matplotlib)"
  exit 77
fi
echo "python: $py"
tmp=$(mktemp -d "${ML_TEST_TMP:-/tmp}/analysis.XXXXXX")
pass=0; fail=0
check() { local name=$1; shift; if "$@"; then pass=$((pass+1)); echo "ok   $name"; else fail=$((fail+1)); echo "FAIL $name"; fi; }
report() { "$py" "$src/analysis/report.py" "$@"; }
checker() { "$py" "$here/check_report.py" "$@"; }

run=$tmp/run
check "synthetic run directory written" "$py" "$here/make_run.py" "$run"
out=$(report "$run" --strict 2>&1); rc=$?
echo "$out"
check "report builds (--strict)" test $rc -eq 0
check "report prints its path" grep -qF "report: $run/report/index.html (9 figures)" <<<"$out"
check "figures valid and not blank, sections, contents" checker "$run/report" --expect-figures 9 \
  --expect "base-&gt;lua" --expect "2024-01-01T00:10:00Z" --expect "slerp.h5" --expect "merge.eval.h5" \
  --expect "fine-tune" --expect "persist (" --expect "emerge (" --expect "disappear (" \
  --expect ">été</span>" --expect ">&lt;bos&gt;</span>" --expect "features_lua.html" --expect "12.5" \
  --expect "<td>lua</td><td>1.25</td>" --expect "mergelens.weightspace"
check "eval table: merge row from the eval file (2.4, 0.33)" bash -c "grep -a -q '<td>merge</td><td>merge</td><td>lua</td><td>2.4</td><td>2.6</td><td>0.33</td>' '$run/report/index.html'"
check "eval table: base from the last /train/eval rows (1.8, 2.1, 0.42, 0.37)" bash -c "grep -a -q '<td>base</td><td>base</td><td></td><td>1.8</td><td>2.1</td><td>0.42</td><td>0.37</td>' '$run/report/index.html'"
check "flow table counts (15 persist, 7 disappear, 2 dead; 17, 5, 2)" bash -c "grep -a -q '<td>15</td><td>7</td><td>2</td><td>17</td><td>5</td><td>2</td><td>68.2%</td><td>31.8%</td><td>22.7%</td>' '$run/report/index.html'"
check "SAE table from /metrics/eval (L0 12.5, FVU 0.3)" bash -c "grep -a -q '<td>12.5</td><td>0.3</td><td>0.05</td>' '$run/report/index.html'"
check "browse page lists the 22 live features" bash -c "[ \$(grep -a -o 'class=\"fh\"' '$run/report/features_base.html' | wc -l) -eq 22 ]"
check "rebuilding removes nothing it needs" bash -c "'$py' '$src/analysis/report.py' '$run' --strict >/dev/null && '$py' '$here/check_report.py' '$run/report' --expect-figures 9 >/dev/null"

# tokenizer reader: every id decodes to its vocabulary bytes, as ml_tokenizer_decode concatenates them
check "tokenizer reader decodes ids to the stored bytes" "$py" - "$run/data/tokenizer.h5" "$here" <<'PY'
import sys
sys.path.insert(0, sys.argv[2]); import make_run
sys.path.insert(0, __import__("os").path.join(sys.argv[2], "..", "..", "analysis")); from mltok import Tokenizer
t = Tokenizer(sys.argv[1])
assert len(t) == len(make_run.VOCAB), len(t)
assert all(t.token_bytes(i) == b for i, b in enumerate(make_run.VOCAB))
assert t.decode([104, 105, 256, 257, 260]) == "hi the catété", t.decode([104, 105, 256, 257, 260])
assert t.decode([0xc3, 0xa9]) == "é"          # one character split over two byte tokens
assert t.special[261] and not t.special[260]
try:
    t.token_bytes(len(t)); sys.exit("out-of-range id accepted")
except ValueError as e:
    assert "outside the vocabulary" in str(e)
PY

# an empty run directory: every section is skipped with a note, no figure
mkdir -p "$tmp/empty"
out=$(report "$tmp/empty" --strict 2>&1); rc=$?
check "empty run directory builds" test $rc -eq 0
check "empty run: no figures, every section present" checker "$tmp/empty/report" --expect-figures 0 \
  --expect "no experiment.h5" --expect "no checkpoint in models/" --expect "no merge sweep" \
  --expect "no tracking file" --expect "no SAE file" --expect "stage not run"

# a malformed file fails its own section only (and --strict makes it fatal)
cp -r "$run" "$tmp/bad"
"$py" -c "import h5py,sys; f=h5py.File(sys.argv[1],'a'); del f['loss']" "$tmp/bad/sweeps/slerp.h5"
out=$(report "$tmp/bad" 2>&1); rc=$?
check "malformed sweep: report still builds" test $rc -eq 0
check "malformed sweep: warning names the section" grep -q "section 'sweeps' failed" <<<"$out"
check "malformed sweep: other figures still there" bash -c "[ \$(grep -a -c '<img' '$tmp/bad/report/index.html') -eq 8 ] && grep -a -q 'section failed' '$tmp/bad/report/index.html'"
report "$tmp/bad" --strict >/dev/null 2>&1; rc=$?
check "malformed sweep: --strict fails" test $rc -ne 0
out=$(report "$tmp/nonexistent" 2>&1); rc=$?
check "missing run directory: one-line error" bash -c "[ $rc -eq 2 ] && grep -q 'nonexistent: not a directory' <<<\"\$0\"" "$out"

# the checker itself rejects a blank figure and a missing one
mkdir -p "$tmp/blank"
"$py" -c "
import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt, sys
fig = plt.figure(figsize=(2, 2)); fig.savefig(sys.argv[1] + '/b.png')
open(sys.argv[1] + '/index.html', 'w').write('<img src=\"b.png\"><img src=\"gone.png\">')" "$tmp/blank"
out=$(checker "$tmp/blank" --sections "" 2>&1); rc=$?
check "checker rejects blank and missing PNGs" bash -c "[ $rc -ne 0 ] && grep -q 'b.png: blank' <<<\"\$0\" && grep -q 'gone.png' <<<\"\$0\"" "$out"

# a real experiment.h5 from `mergelens run` (external links under /outputs) when the binary exists
if [ -n "${ML_BIN:-}" ] && [ -x "${ML_BIN}" ]; then
  printf 'name: rep\nrun_dir: %s\nstages:\n  a:\n    command: doctor\n    options: {gemm_n: 64}\n' "$tmp/real" > "$tmp/real.yaml"
  "$ML_BIN" run "$tmp/real.yaml" >/dev/null 2>&1
  out=$(report "$tmp/real" --strict 2>&1); rc=$?
  check "report from a real mergelens run" bash -c "[ $rc -eq 0 ] && grep -a -q '<td>a</td><td>doctor</td><td>done</td>' '$tmp/real/report/index.html'"
fi

rm -rf "$tmp"
echo "analysis: $pass passed, $fail failed"
[ $fail -eq 0 ]
