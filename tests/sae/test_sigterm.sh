#!/usr/bin/env bash
# Real SIGTERM against `mergelens sae` (what Slurm sends to every rank at
# preemption or the time limit), on 2 ranks and on 1, once the training has
# started (the log's "sae: training" line): every rank stops within seconds
# with a non-zero status and the one-line "interrupted by SIGTERM: checkpoint
# at step S of 512 ..." message, both files of the L1 grid hold complete = 0 at
# step S, `export saelens` refuses one; the rerun of the same command succeeds
# and its files are bitwise those of an uninterrupted run with the same rank
# count (h5diff, /profile excluded). Uses the reliability fixture (~3 s).
set -u
. "${ML_SRC:?}/tests/common/ml_check.sh"
. "$ML_SRC/tests/reliability/lib.sh"
rel_begin sae_sigterm
cmd="sae $F/acts.h5 --out out.h5 --expansion 4 --batch 256 --lr 1e-3 --l1 3e-4,1e-3 --eval_rows 1024 --tokens 131072 --seed 3"
files="out-l1_0.0003.h5 out-l1_0.001.h5"

for np in 2 1; do
  ref=$T/ref$np; dir=$T/sig$np; mkdir -p "$ref" "$dir"
  (cd "$ref" && mpirun_n $np "$bin" $cmd) > "$ref/log" 2>&1 || { check "np$np: uninterrupted run" false; tail -5 "$ref/log"; continue; }
  (cd "$dir" && ML_LOG_LEVEL=info exec "$mpiexec" --allow-run-as-root --oversubscribe --bind-to none -n $np "$bin" $cmd) > "$dir/log" 2>&1 &
  pid=$!
  for _ in $(seq 600); do grep -q "sae: training" "$dir/log" && break; kill -0 $pid 2>/dev/null || break; sleep 0.05; done
  sleep "0.$(printf '%02d' $((RANDOM % 20)))"
  ts=$(now_ms)
  kill -TERM $(pgrep -P $pid) 2>/dev/null; wait $pid; rc=$?
  secs=$(awk -v d="$(( $(now_ms) - ts ))" 'BEGIN { printf "%.1f", d / 1000 }')
  if [ $rc -eq 0 ]; then
    echo "note: np$np finished before SIGTERM arrived"
  else
    s=$(h5dump -a /checkpoint/step "$dir/out-l1_0.0003.h5" 2>/dev/null | sed -n 's/^ *(0): *//p')
    echo "np$np: SIGTERM -> checkpoint at step $s of 512, status $rc, $secs s"
    check "np$np: SIGTERM ends the job within 10 s ($secs s)" awk -v s="$secs" 'BEGIN { exit !(s < 10) }'
    check "np$np: one-line message names the signal, step and files" grep -qF \
      "interrupted by SIGTERM: checkpoint at step $s of 512 written to out-l1_0.0003.h5 (and 1 more file of the grid); rerun the same command to resume" "$dir/log"
    for f in $files; do
      check "np$np: $f is a checkpoint (complete = 0) at step $s" test "$(attr "$dir/$f" complete)" = 0 -a \
        "$(h5dump -a /checkpoint/step "$dir/$f" 2>/dev/null | sed -n 's/^ *(0): *//p')" = "$s"
    done
    out=$("$bin" export saelens "$dir/out-l1_0.001.h5" "$dir/exp" 2>&1); erc=$?
    check "np$np: export saelens refuses the checkpoint" test $erc -ne 0
    check "np$np: ... naming it" has "$out" "out-l1_0.001.h5: not a finished SAE but the checkpoint of an interrupted \`mergelens sae\` (complete = 0, step $s of 512)"
  fi
  (cd "$dir" && mpirun_n $np "$bin" $cmd) > "$dir/log2" 2>&1; rc=$?
  check "np$np: rerun succeeds" test $rc -eq 0 || tail -5 "$dir/log2"
  for f in $files; do
    check "np$np: rerun $f bitwise equal to the uninterrupted run" same_h5 "$ref/$f" "$dir/$f"
    check "np$np: $f complete = 1" test "$(attr "$dir/$f" complete)" = 1
  done
done
ml_check_summary sae_sigterm && rm -rf "$T"
