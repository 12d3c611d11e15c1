#!/usr/bin/env bash
# SIGUSR1 / SIGTERM (Slurm preemption, --signal) during the long stages on 2
# ranks, at a seeded random moment after the first periodic checkpoint:
#  - fine-tune (train --init_from) and sweep: SIGUSR1 to mpiexec (which
#    forwards it); sae and capture: SIGTERM to every rank (what Slurm does);
#  - the job ends within seconds with a non-zero status and the one-line
#    "interrupted by SIGx: checkpoint at <step|point|batch> N of M written to
#    out.h5; rerun the same command to resume", the file left says complete = 0
#    (a signal after the last unit lets the run finish: then the file left is
#    the finished one);
#  - once no process of the run is left, the rerun resumes and its output
#    equals an uninterrupted 2-rank run's bit for bit.
set -u
. "${ML_SRC:?}/tests/common/ml_check.sh"
. "$ML_SRC/tests/reliability/lib.sh"
rel_begin signals
declare -A CMD SIG UNIT TOTAL
CMD[finetune]="train --init_from $F/base.h5 --domains $F/b.h5 --out out.h5 --steps 400 --global_batch 8 --context 16 --eval_batches 2 --checkpoint_every 10 --lr 1e-3"
SIG[finetune]=USR1; UNIT[finetune]=step; TOTAL[finetune]=400
CMD[sae]="sae $F/acts.h5 --out out.h5 --expansion 4 --batch 256 --lr 1e-3 --eval_rows 1024 --tokens 131072 --seed 3 --checkpoint_every 32"
SIG[sae]=TERM; UNIT[sae]=step; TOTAL[sae]=512
CMD[sweep]="sweep $F/rec.yaml --param t --count 161 --domains $F/a.h5,$F/b.h5 --eval_windows 64 --checkpoint_every 8 --out out.h5"
SIG[sweep]=USR1; UNIT[sweep]=point; TOTAL[sweep]=161
CMD[capture]="capture $F/base.h5 --domains $F/a.h5,$F/b.h5 --tokens 65536 --context 16 --checkpoint_every 32 --out out.h5"
SIG[capture]=TERM; UNIT[capture]=batch; TOTAL[capture]=512

for stage in finetune sae sweep capture; do
  cmd=${CMD[$stage]} sig=${SIG[$stage]}
  ref=$T/$stage/ref; dir=$T/$stage/sig; mkdir -p "$ref" "$dir"
  (cd "$ref" && mpirun_n 2 "$bin" $cmd) > "$ref/log" 2>&1 || { check "$stage: uninterrupted run" false; tail -5 "$ref/log"; continue; }
  session_start "$dir" 2 $cmd; pid=$session_pid
  # wait until the ranks compute (the first periodic checkpoint), then a random moment
  while [ ! -e "$dir/out.h5" ] && kill -0 $pid 2>/dev/null; do sleep 0.02; done
  sleep "0.$(printf '%02d' $((RANDOM % 30)))"
  ts=$(now_ms)
  if [ "$sig" = TERM ]; then kill -TERM $(pgrep -P $pid) 2>/dev/null; else kill -USR1 $pid 2>/dev/null; fi
  wait $pid; rc=$?
  secs=$(awk -v d="$(( $(now_ms) - ts ))" 'BEGIN { printf "%.1f", d / 1000 }')
  c=$(attr "$dir/out.h5" complete)
  if [ $rc -eq 0 ] || [ "$c" = 1 ]; then
    echo "note: $stage finished before SIG$sig took effect (status $rc)"
    check "$stage: the file left is the finished one" same_h5 "$ref/out.h5" "$dir/out.h5"
  else
    n=$(ckpt_pos "$stage" "$dir/out.h5")
    check "$stage: SIG$sig ends the job within 10 s ($secs s, status $rc)" awk -v s="$secs" 'BEGIN { exit !(s < 10) }'
    check "$stage: one-line message names the signal, ${UNIT[$stage]} and file" \
      grep -qF "interrupted by SIG$sig: checkpoint at ${UNIT[$stage]} $n of ${TOTAL[$stage]} written to out.h5; rerun the same command to resume" "$dir/log"
    check "$stage: the file left is a checkpoint (complete = 0, ${UNIT[$stage]} $n)" test "$c" = 0
  fi
  check "$stage: no process of the signalled run is left before the rerun" session_clear "$dir"
  (cd "$dir" && mpirun_n 2 "$bin" $cmd) > "$dir/log2" 2>&1; rc=$?
  check "$stage: rerun after SIG$sig succeeds" test $rc -eq 0 || tail -5 "$dir/log2"
  check "$stage: rerun output bitwise equal to the uninterrupted run" same_h5 "$ref/out.h5" "$dir/out.h5"
done
ml_check_summary signals && rm -rf "$T"
