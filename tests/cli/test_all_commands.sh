#!/usr/bin/env bash
# Every subcommand (and sub-subcommand) through the real executable under
# mpiexec on 2 and 3 ranks, on tiny inputs built here (issue #17 item 4),
# including ranks that get no rows or work (a 2-window eval and sae-eval, a
# 2-point sweep, on 3 ranks). Each must exit 0 on every rank within the
# timeout (a rank left in a collective hangs until it). Then a bad option of
# each command: exit 1, exactly one "error:" line, no MPI_ABORT banner.
set -u
. "${ML_SRC:?}/tests/common/ml_check.sh"
. "$ML_SRC/tests/reliability/lib.sh"
export ML_EXIT_WAIT=20   # a genuinely lone failure must show as MPI_ABORT, not as a timeout
rel_begin all_commands
W=$T/w; mkdir -p "$W"; cd "$W" || exit 1
# ---- inputs beyond the shared fixture (1 rank, once) ----
(
  set -e
  cp "$F"/*.h5 "$F"/*.txt "$F"/tokenizer.json "$F"/rec.yaml .
  # a store whose val split holds 2 windows of 16 tokens (36 tokens)
  for i in $(seq 10); do echo "the cat sat on a mat $i"; done > tiny.txt
  "$bin" tokenize --tokenizer tok.h5 --out_dir . --domains "tiny=lines:tiny.txt"
  "$bin" train --init_from base.h5 --domains a.h5 --out ft2.h5 --steps 4 --global_batch 8 --context 16 --eval_batches 1
  "$bin" capture ft.h5 --domains a.h5,b.h5 --tokens 8192 --context 16 --out acts_ft.h5
  "$bin" sae acts_ft.h5 --out sae_ft.h5 --expansion 4 --batch 256 --lr 1e-3 --eval_rows 1024
  "$bin" sweep rec.yaml --param t --count 2 --domains a.h5 --eval_windows 8 --out sweep.h5
  "$bin" sweep rec.yaml --param t --count 3 --domains a.h5 --eval_windows 8 --task 0 --tasks 2 --out part0.h5
  "$bin" sweep rec.yaml --param t --count 3 --domains a.h5 --eval_windows 8 --task 1 --tasks 2 --out part1.h5
  "$bin" eval ft.h5 --domains a.h5,b.h5 --max_batches 1 --out ev1.h5
  "$bin" eval ft2.h5 --domains a.h5,b.h5 --max_batches 1 --out ev2.h5
  "$bin" lora train --host base.h5 --domains b.h5 --out adapter.h5 --steps 2 --context 16 --global_batch 6 --eval_batches 1
  "$bin" export hf base.h5 hf_in
) > "$T/inputs.log" 2>&1 || { echo "building the inputs failed:"; tail -20 "$T/inputs.log"; exit 1; }

# ---- NAME | arguments (outputs go to o_* names, removed before each run) ----
cases=(
"version|version"
"doctor|doctor --gemm_n 64 --dir $W"
"inspect|inspect base.h5"
"data stories|data stories --out o_st.txt --n 10"
"data stats|data stats --domains a=text:st_b.txt --tokenizer tok.h5"
"tokenizer train|tokenizer train --out o_tok.h5 --vocab_size 280 --domains a=text:st_b.txt"
"tokenizer export|tokenizer export --in tok.h5 --out o_tok.json"
"tokenizer import|tokenizer import --in tokenizer.json --out o_tok.h5"
"tokenize|tokenize --tokenizer tok.h5 --out_dir o_tk --domains b=text:st_b.txt"
"train|train --domains a.h5 --out o_m.h5 --d_model 32 --d_mlp 64 --n_heads 4 --n_kv_heads 2 --context 16 --global_batch 6 --eval_batches 1 --steps 3"
"eval (2 windows)|eval ft.h5 --domains tiny.h5 --batch 6 --out o_ev.h5"
"merge|merge rec.yaml --out o_mg.h5"
"sweep (2 points)|sweep rec.yaml --param t --count 2 --domains tiny.h5 --out o_sw.h5"
"sweep-combine|sweep-combine part0.h5 part1.h5 --out o_sc.h5"
"capture|capture base.h5 --domains a.h5 --tokens 256 --context 16 --out o_acts.h5"
"sae|sae acts.h5 --out o_sae.h5 --expansion 2 --batch 240 --tokens 2400 --eval_rows 512"
"sae-eval (2 windows)|sae-eval sae.h5 --domains a.h5 --windows 2 --out o_se.h5"
"compare|compare --a sae.h5 --acts_a acts.h5 --b sae_ft.h5 --acts_b acts_ft.h5 --max_tokens 1024 --out o_cmp.h5"
"track|track --edges base:ft --saes base=sae.h5,ft=sae_ft.h5 --acts base=acts.h5,ft=acts_ft.h5 --max_tokens 1024 --out o_tr.h5"
"track-sweep|track-sweep sweep.h5 --sae sae_ft.h5 --acts acts_ft.h5 --max_tokens 256 --out o_ts.h5"
"region|region --base base.h5 --models a=ft2.h5,b=ft.h5 --domains a.h5 --eval_windows 8 --alpha_count 2 --random 1 --out o_rg.h5"
"region centroid|region centroid --models a=ft2.h5,b=ft.h5 --out o_cen.h5"
"region centroid-table|region centroid-table --domains a,b --centroid_evals ev1.h5,ev2.h5 --base_evals ev2.h5,ev1.h5 --out o_ct.h5"
"export hf|export hf base.h5 o_hf"
"export saelens|export saelens sae.h5 o_sl"
"import hf|import hf hf_in o_imp.h5"
"lora train|lora train --host base.h5 --domains b.h5 --out o_ad.h5 --steps 2 --context 16 --global_batch 6 --eval_batches 1"
"lora port|lora port --adapters adapter.h5 --hosts ft.h5 --domains b.h5 --out o_port.h5 --steps 2 --context 16 --global_batch 6 --eval_batches 1 --conditions ported --seeds 1"
"lora merge|lora merge adapter.h5 --out o_lm.h5"
"lora export|lora export adapter.h5 o_lx"
"run --dry_run|run $ML_SRC/jobs/tiny.yaml --out $W/o_run --dry_run true"
)
# run_np NP ARGS...: $out (all output), $codes (each rank's own exit status), $rc
run_np() {
  local np=$1; shift
  rm -rf o_* rank.*
  out=$(timeout 90 "$mpiexec" --allow-run-as-root --oversubscribe --bind-to none -n "$np" \
        bash -c '"$@"; echo $? > rank.${OMPI_COMM_WORLD_RANK:-0}' _ "$bin" "$@" 2>&1); rc=$?
  codes=$(cat rank.* 2>/dev/null | sort | tr '\n' ' ')
}
crashed() { grep -qE "MPI_ABORT|Segmentation|AddressSanitizer|runtime error|core dumped|signal [0-9]" <<<"$1"; }
for np in 2 3; do
  for c in "${cases[@]}"; do
    IFS='|' read -r name args <<<"$c"
    t0=$(now_ms); run_np "$np" $args; t=$(( ($(now_ms) - t0) / 100 ))
    want=$(printf '0 %.0s' $(seq "$np"))
    if [ $rc -eq 0 ] && [ "$codes" = "$want" ] && ! crashed "$out"; then
      check "np$np $name: exit 0 on every rank ($((t / 10)).$((t % 10)) s)" true
    else
      check "np$np $name: exit 0 on every rank (mpiexec $rc, ranks: $codes)" false; echo "$out" | tail -8 | sed 's/^/  | /'
    fi
  done
done
# a bad option of each command: one agreed error line, exit 1 on every rank
for c in "${cases[@]}"; do
  IFS='|' read -r name args <<<"$c"
  np=$(( ${#name} % 2 + 2 ))   # 2 or 3 ranks, spread over the commands
  run_np "$np" $args --no_such_option 1
  want=$(printf '1 %.0s' $(seq "$np"))
  why=""
  [ "$codes" = "$want" ] || why="ranks exited: $codes"
  [ "$(grep -c 'error: ' <<<"$out")" -eq 1 ] || why="$why; $(grep -c 'error: ' <<<"$out") error lines"
  grep -qF "no_such_option" <<<"$out" || why="$why; the error does not name the option"
  ! crashed "$out" || why="$why; crash or MPI_ABORT"
  if [ -z "$why" ]; then check "np$np $name --no_such_option: $(grep -m1 'error: ' <<<"$out" | cut -c1-90)" true
  else check "np$np $name --no_such_option: $why" false; echo "$out" | tail -6 | sed 's/^/  | /'; fi
done
ml_check_summary all_commands && rm -rf "$T"
