#!/usr/bin/env bash
# SIGUSR1 / SIGTERM (Slurm preemption, --signal) during the long stages on 2
# ranks, at a seeded random moment:
#  - fine-tune (train --init_from): SIGUSR1 to mpiexec (which forwards it):
#    checkpoint, non-zero exit within seconds with "interrupted by SIGUSR1:
#    checkpoint at step S ...", rerun resumes, output bitwise equal to an
#    uninterrupted 2-rank run;
#  - sae, capture: SIGTERM to every rank (what Slurm does); sweep: SIGUSR1 to
#    mpiexec.
#    None of them checkpoints (docs/RELIABILITY.md): the job ends within seconds
#    with a non-zero status, nothing is left under the output name, and a
#    rerun redoes the work and gives the uninterrupted run's output bit for bit.
set -u
. "${ML_SRC:?}/tests/common/ml_check.sh"
. "$ML_SRC/tests/reliability/lib.sh"
rel_begin signals
declare -A CMD SIG
CMD[finetune]="train --init_from $F/base.h5 --domains $F/b.h5 --out out.h5 --steps 100 --global_batch 8 --context 16 --eval_batches 2 --checkpoint_every 5 --lr 1e-3"
SIG[finetune]=USR1
CMD[sae]="sae $F/acts.h5 --out out.h5 --expansion 4 --batch 256 --lr 1e-3 --eval_rows 1024 --tokens 32768 --seed 3"
SIG[sae]=TERM
CMD[sweep]="sweep $F/rec.yaml --param t --count 41 --domains $F/a.h5,$F/b.h5 --eval_windows 16 --out out.h5"
SIG[sweep]=USR1
CMD[capture]="capture $F/base.h5 --domains $F/a.h5,$F/b.h5 --tokens 65536 --context 16 --out out.h5"
SIG[capture]=TERM

for stage in finetune sae sweep capture; do
  cmd=${CMD[$stage]} sig=${SIG[$stage]}
  ref=$T/$stage/ref; dir=$T/$stage/sig; mkdir -p "$ref" "$dir"
  t0=$(now_ms)
  (cd "$ref" && mpirun_n 2 "$bin" $cmd) > "$ref/log" 2>&1 || { check "$stage: uninterrupted run" false; tail -5 "$ref/log"; continue; }
  dur=$(( $(now_ms) - t0 ))
  (cd "$dir" && exec "$mpiexec" --allow-run-as-root --oversubscribe --bind-to none -n 2 "$bin" $cmd) > "$dir/log" 2>&1 &
  pid=$!
  # wait until the ranks compute (train: first checkpoint), then a random moment
  if [ "$stage" = finetune ]; then
    while [ ! -e "$dir/out.h5" ] && kill -0 $pid 2>/dev/null; do sleep 0.02; done
    sleep "0.$(printf '%02d' $((RANDOM % 30)))"
  else
    sleep "$(awk -v d="$(( dur / 4 + RANDOM % (dur / 2) ))" 'BEGIN { printf "%.3f", d / 1000 }')"
  fi
  ts=$(now_ms)
  if [ "$sig" = TERM ]; then kill -TERM $(pgrep -P $pid) 2>/dev/null; else kill -USR1 $pid 2>/dev/null; fi
  wait $pid; rc=$?
  secs=$(awk -v d="$(( $(now_ms) - ts ))" 'BEGIN { printf "%.1f", d / 1000 }')
  if [ $rc -eq 0 ]; then
    echo "note: $stage finished before SIG$sig arrived (run of $dur ms)"
  else
    check "$stage: SIG$sig ends the job within 10 s ($secs s, status $rc)" awk -v s="$secs" 'BEGIN { exit !(s < 10) }'
    if [ "$stage" = finetune ]; then
      s=$(h5dump -a /train/step "$dir/out.h5" 2>/dev/null | sed -n 's/^ *(0): *//p')
      check "$stage: non-zero exit status ($rc)" test $rc -ne 0
      check "$stage: one-line message names the signal, step and file" \
        grep -qF "interrupted by SIG$sig: checkpoint at step $s of 100 written to out.h5; rerun the same command to resume" "$dir/log"
      check "$stage: the file left is a checkpoint (complete = 0)" test "$(attr "$dir/out.h5" complete)" = 0
    else
      check "$stage: nothing left under the output name" test ! -e "$dir/out.h5"
    fi
  fi
  (cd "$dir" && mpirun_n 2 "$bin" $cmd) > "$dir/log2" 2>&1; rc=$?
  check "$stage: rerun after SIG$sig succeeds" test $rc -eq 0 || tail -5 "$dir/log2"
  check "$stage: rerun output bitwise equal to the uninterrupted run" same_h5 "$ref/out.h5" "$dir/out.h5"
done
ml_check_summary signals && rm -rf "$T"
