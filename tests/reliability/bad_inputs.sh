#!/usr/bin/env bash
# Corrupted and wrong inputs through the real CLI on 1 and 2 ranks: truncated
# HDF5 files, files of the wrong format or version, checkpoints with wrong
# shapes, NaN/Inf in weights and activations, job/config/recipe files with
# wrong types, a broken tokenizer.json, a truncated safetensors file.
# Every case must give exactly one "error:" line naming the file and the
# problem, a non-zero exit on every rank (each rank's own exit status is
# recorded, so a rank killed by MPI_Abort or a signal fails the case), and no
# crash (no signal, no sanitizer report). The table in docs/RELIABILITY.md
# lists the same cases.
# Usage: bad_inputs.sh H5POKE   (tests/reliability/h5poke.c)
set -u
poke=$(realpath "${1:?usage: bad_inputs.sh H5POKE}")
. "${ML_SRC:?}/tests/common/ml_check.sh"
. "$ML_SRC/tests/reliability/lib.sh"
rel_begin bad_inputs
W=$T/w; mkdir -p "$W"; cd "$W" || exit 1
cp "$F"/a.h5 "$F"/b.h5 "$F"/base.h5 "$F"/ft.h5 "$F"/acts.h5 "$F"/st_a.txt .

# ---- the damaged inputs ----
head -c 20000 base.h5 > trunc_model.h5
head -c 50000 a.h5 > trunc_store.h5
head -c 100000 acts.h5 > trunc_acts.h5
: > empty.h5
cp base.h5 ver.h5 && "$poke" ver.h5 attr-int / format_version 99
cp base.h5 fmt.h5 && "$poke" fmt.h5 attr-str / format mergelens.nonsense
cp base.h5 shape.h5 && "$poke" shape.h5 reshape /params/model.layers.0.mlp.up_proj.weight 63 32
cp base.h5 nan.h5 && "$poke" nan.h5 value /params/model.layers.0.mlp.up_proj.weight 5 nan
cp ft.h5 inf.h5 && "$poke" inf.h5 value /params/lm_head.weight 7 inf
cp acts.h5 inf_acts.h5 && "$poke" inf_acts.h5 value /hooks/blocks.0.mlp.hook_post/acts 100 inf
TRAIN="--domains a.h5 $MODEL_ARGS --steps 20 --checkpoint_every 10"
"$bin" train $TRAIN --out ck.h5 > /dev/null 2>&1 && "$poke" ck.h5 attr-int / complete 0 &&
  "$poke" ck.h5 reshape /optimizer/m/model.norm.weight 31
"$bin" export hf base.h5 hf > /dev/null 2>&1 && head -c 3000 hf/model.safetensors > hf/m && mv hf/m hf/model.safetensors
printf 'train:\n  steps: ten\n' > cfg_type.yaml
printf 'train:\n  steps: [1, 2]\n' > cfg_list.yaml
printf 'name: x\nseed: abc\nstages:\n  a:\n    command: train\n' > job_seed.yaml
printf 'name: x\nstages:\n  - a\n  - b\n' > job_stages.yaml
printf 'name: x\nstages:\n  a:\n    command: train\n    options: [1, 2]\n' > job_options.yaml
printf 'name: x\nstages:\n  a:\n    command: train\n    needs: [nowhere]\n' > job_needs.yaml
printf 'a: [unclosed\n' > job_syntax.yaml
printf 'models:\n  - model: base.h5\n  - model: ft.h5\nmerge_method: slerp\nbase_model: base.h5\nparameters:\n  t: high\ndtype: float32\n' > rec_type.yaml
printf 'models:\n  - model: inf.h5\n  - model: base.h5\nmerge_method: linear\nparameters:\n  weight: 0.5\ndtype: float32\n' > rec_inf.yaml
printf '{"model": {"type": "BPE", "vocab": 5}}' > tok_bad.json
printf '{"model": ' > tok_trunc.json
cp a.h5 bad_offsets.h5 && "$poke" bad_offsets.h5 value /train/doc_offsets 3 1e9
# a store whose splits are shorter than the context (10 short documents)
for i in $(seq 10); do echo "the cat sat on a mat $i"; done > tiny.txt
"$bin" tokenize --tokenizer "$F"/tok.h5 --out_dir . --domains "tiny=lines:tiny.txt" > /dev/null 2>&1
cp "$F"/sae.h5 "$F"/rec.yaml .

# ---- the cases: NAME | expected text | command ----
cases=(
"truncated checkpoint|trunc_model.h5: not a readable HDF5 file (truncated or corrupt?)|eval trunc_model.h5 --domains a.h5"
"truncated token store|trunc_store.h5: not a readable HDF5 file (truncated or corrupt?)|train --domains trunc_store.h5 --out o.h5 $MODEL_ARGS --steps 2"
"truncated activations|trunc_acts.h5: not a readable HDF5 file (truncated or corrupt?)|sae trunc_acts.h5 --out o.h5"
"empty file as token store|empty.h5: not a readable HDF5 file (truncated or corrupt?)|train --domains empty.h5 --out o.h5 $MODEL_ARGS --steps 2"
"text file as checkpoint|st_a.txt: not a readable HDF5 file (truncated or corrupt?)|eval st_a.txt --domains a.h5"
"token store as checkpoint|a.h5: is a 'mergelens.tokens' file, expected 'mergelens.checkpoint'|eval a.h5 --domains a.h5"
"checkpoint as activations|base.h5: is a 'mergelens.checkpoint' file, expected 'mergelens.activations'|sae base.h5 --out o.h5"
"unknown format|fmt.h5: is a 'mergelens.nonsense' file, expected 'mergelens.checkpoint'|eval fmt.h5 --domains a.h5"
"future format version|ver.h5: 'mergelens.checkpoint' format_version 99 is not supported (this build reads 1..1)|eval ver.h5 --domains a.h5"
"missing file|none.h5: cannot open: No such file or directory|eval none.h5 --domains a.h5"
"wrong tensor shape (eval)|shape.h5: tensor /params/model.layers.0.mlp.up_proj.weight has shape [63, 32], the model expects [64, 32]|eval shape.h5 --domains a.h5"
"wrong tensor shape (fine-tune init)|shape.h5: tensor /params/model.layers.0.mlp.up_proj.weight has shape [63, 32], the model expects [64, 32]|train --init_from shape.h5 --domains b.h5 --out o.h5 --steps 2 --context 16"
"wrong optimizer shape (resume)|ck.h5: tensor /optimizer/m/model.norm.weight has shape [31], the model expects [32]|train $TRAIN --out ck.h5"
"NaN in weights (eval)|nan.h5: tensor /params/model.layers.0.mlp.up_proj.weight holds a non-finite value (nan at flat index 5)|eval nan.h5 --domains a.h5"
"NaN in weights (capture)|nan.h5: tensor /params/model.layers.0.mlp.up_proj.weight holds a non-finite value (nan at flat index 5)|capture nan.h5 --domains a.h5 --tokens 256 --context 16 --out o.h5"
"Inf in weights (merge)|inf.h5: tensor /params/lm_head.weight holds a non-finite value (inf at flat index 7)|merge rec_inf.yaml --out o.h5"
"Inf in weights (sweep)|inf.h5: tensor /params/lm_head.weight holds a non-finite value (inf at flat index 7)|sweep rec_inf.yaml --param weight[0] --count 3 --domains a.h5 --out o.h5"
"Inf in activations (sae)|inf_acts.h5: dataset '/hooks/blocks.0.mlp.hook_post/acts' row|sae inf_acts.h5 --out o.h5 --batch 256"
"config value of the wrong type|cfg_type.yaml:2: key 'steps': expected an integer, got 'ten'|train --config cfg_type.yaml --domains a.h5 --out o.h5"
"config list for a scalar|cfg_list.yaml:2: key 'steps': expected a single value, got a list|train --config cfg_list.yaml --domains a.h5 --out o.h5"
"job file: seed not an integer|job_seed.yaml:2: key 'seed': expected an integer, got 'abc'|run job_seed.yaml"
"job file: stages a list|job_stages.yaml: key 'stages' must be a non-empty mapping of stage names|run job_stages.yaml"
"job file: options a list|job_options.yaml:5: stage 'a': 'options' must be a mapping|run job_options.yaml"
"job file: unknown dependency|job_needs.yaml:5|run job_needs.yaml"
"job file: YAML syntax|job_syntax.yaml:2: YAML syntax error|run job_syntax.yaml"
"merge recipe value of the wrong type|rec_type.yaml:7: key 't': expected a number, got 'high'|merge rec_type.yaml --out o.h5"
"tokenizer.json without merges|tok_bad.json: BPE model lacks 'vocab' (object) or 'merges' (array)|tokenize --tokenizer tok_bad.json --out_dir o --domains a=text:st_a.txt"
"truncated tokenizer.json|tok_trunc.json|tokenize --tokenizer tok_trunc.json --out_dir o --domains a=text:st_a.txt"
"SAE learning rate out of range|key 'lr': -1 is out of range [0, 10]|sae acts.h5 --out o.h5 --lr -1"
"topk k larger than the dictionary|sae: k 1000 must be in 1..d_sae (128)|sae acts.h5 --out o.h5 --architecture topk --k 1000 --expansion 2"
"np2: SAE batch not a multiple of the ranks|sae: batch 255 must be a positive multiple of the 2 ranks|sae acts.h5 --out o.h5 --batch 255"
"np2: train batch not a multiple of the ranks|option 'global_batch': 7 is not a multiple of the 2 ranks|train --domains a.h5 --out o.h5 $MODEL_ARGS --global_batch 7 --steps 2"
"unknown sweep parameter|sweep: cannot sweep parameter 'bogus' of merge_method slerp (sweepable: t)|sweep rec.yaml --param bogus --count 2 --domains a.h5 --out o.h5"
"tokenizer train on a missing corpus|none.txt: No such file or directory|tokenizer train --out o.h5 --vocab_size 280 --domains a=text:none.txt"
"tokenizer export of a missing file|none.h5: no such tokenizer file|tokenizer export --in none.h5 --out o.json"
"tokenizer import of a text file|st_a.txt: not a readable HDF5 file (truncated or corrupt?)|tokenizer import --in st_a.txt --out o.h5"
"tokenize with a missing tokenizer|none.h5: no such tokenizer file|tokenize --tokenizer none.h5 --out_dir o --domains a=text:st_a.txt"
"tokenize a missing corpus|none.txt: No such file or directory|tokenize --tokenizer $F/tok.h5 --out_dir o --domains a=text:none.txt"
"compare with a missing SAE|none.h5: cannot open: No such file or directory|compare --a none.h5 --acts_a acts.h5 --b sae.h5 --acts_b acts.h5 --out o.h5"
"track edge of an unknown model|track: model 'zz' of edge base:zz has no --saes entry|track --edges base:zz --saes base=sae.h5 --acts base=acts.h5 --out o.h5"
"data stats of a missing corpus|none.txt: No such file or directory|data stats --domains a=text:none.txt"
"data: unknown subcommand|data: unknown subcommand 'bogus' (stories, stats)|data bogus"
"train context longer than the store|tiny.h5: split 'train' has 145 tokens, fewer than one window of T+1 = 201 (--context 200 is longer than the store|train --domains tiny.h5 --out o.h5 ${MODEL_ARGS/--context 16/--context 200} --steps 2"
"corrupt /train/doc_offsets|bad_offsets.h5: dataset '/train/doc_offsets' is corrupt|capture base.h5 --domains bad_offsets.h5 --tokens 256 --context 16 --out o.h5"
"truncated safetensors|hf/model.safetensors: tensor 'lm_head.weight': data_offsets [0, |import hf hf o.h5"
)

# run_case NP CMD...: sets $out (all output) and $codes (each rank's exit status)
run_case() {
  local np=$1; shift
  rm -f rank.*
  # each rank records its own exit status and then exits 0, so that mpiexec
  # does not kill the others first: what we see is what every rank did
  out=$(timeout 60 "$mpiexec" --allow-run-as-root --oversubscribe --bind-to none -n "$np" \
        bash -c '"$@"; echo $? > rank.${OMPI_COMM_WORLD_RANK:-0}' _ "$bin" "$@" 2>&1)
  codes=$(cat rank.* 2>/dev/null | sort | tr '\n' ' ')
}
ncases=0
for np in 1 2; do
  for c in "${cases[@]}"; do
    IFS='|' read -r name text cmd <<<"$c"
    [ "$np" = 1 ] && [ "${name#np2: }" != "$name" ] && continue   # a case of several ranks only
    run_case "$np" $cmd
    ncases=$((ncases + 1))
    ok=1; why=""
    n=0; for x in $codes; do n=$((n + 1)); { [ "$x" -ge 1 ] && [ "$x" -lt 128 ]; } || { ok=0; why="rank exit $x"; }; done
    [ $n -eq "$np" ] || { ok=0; why="$n of $np ranks exited on their own (codes: $codes)"; }
    grep -qF -- "$text" <<<"$out" || { ok=0; why="$why; message lacks '$text'"; }
    [ "$(grep -c '^error: ' <<<"$out")" -eq 1 ] || { ok=0; why="$why; not exactly one error line"; }
    if grep -qE "MPI_ABORT|Segmentation|AddressSanitizer|runtime error|core dumped|signal [0-9]" <<<"$out"; then ok=0; why="$why; crash or abort"; fi
    if [ $ok = 1 ]; then check "np$np $name: $(grep -m1 '^error: ' <<<"$out" | cut -c1-110)" true
    else check "np$np $name: $why" false; echo "$out" | head -8 | sed 's/^/  | /'; fi
  done
done
# an input the user may not read (as root every file is readable: run as nobody)
if [ "$(id -u)" = 0 ] && command -v setpriv > /dev/null; then
  pd=$(mktemp -d /tmp/ml_perm.XXXXXX); chmod 755 "$pd"
  cp base.h5 "$pd/m.h5"; cp a.h5 "$pd/a.h5"; chmod 000 "$pd/m.h5"; chmod 644 "$pd/a.h5"
  for np in 1 2; do
    out=$(cd "$pd" && timeout 60 setpriv --reuid=65534 --regid=65534 --clear-groups env HOME="$pd" \
          "$mpiexec" --oversubscribe --bind-to none -n "$np" "$bin" eval "$pd/m.h5" --domains "$pd/a.h5" 2>&1); rc=$?
    ncases=$((ncases + 1))
    check "np$np unreadable model: exit 1 ($rc), one line 'Permission denied'" bash -c \
      "[ $rc -ne 0 ] && [ $rc -ne 124 ] && [ \"\$(grep -c '^error: ' <<<\"\$0\")\" -eq 1 ] && grep -qF 'm.h5: cannot open: Permission denied' <<<\"\$0\"" "$out"
  done
  rm -rf "$pd"
else
  echo "note: unreadable-input case skipped (needs root and setpriv)"
fi
echo "bad inputs tried: $ncases (${#cases[@]} cases on 2 ranks, those not marked np2 also on 1 rank)"
ml_check_summary bad_inputs && rm -rf "$T"
