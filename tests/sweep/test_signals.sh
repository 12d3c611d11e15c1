#!/usr/bin/env bash
# Real signals and kills against `mergelens sweep` (the CLI, fixture of
# tests/reliability/lib.sh: a SLERP recipe of two tiny trained models):
#  1. 2 ranks, SIGUSR1 sent to mpiexec after the first periodic checkpoint:
#     non-zero exit within seconds, the one-line message naming the point and
#     file, out.h5 left with complete = 0; track-sweep and sweep-combine refuse
#     it; the rerun is bitwise the uninterrupted 2-rank run (same_h5);
#  2. 2 ranks, SIGTERM to ONE rank only: the ranks agree at the next round, same checks;
#  3. 1 process killed with SIGKILL after a periodic checkpoint, resumed on 2
#     ranks: bitwise the uninterrupted 2-rank run (results do not depend on ranks);
#  4. the command of tests/reliability/signals.sh (no periodic checkpoints),
#     SIGUSR1 to mpiexec at random moments: every outcome is one of those
#     documented there, and the rerun equals the uninterrupted run.
set -u
. "${ML_SRC:?}/tests/common/ml_check.sh"
. "$ML_SRC/tests/reliability/lib.sh"
rel_begin sweep_signals
CMD="sweep $F/rec.yaml --param t --count 61 --domains $F/a.h5,$F/b.h5 --eval_windows 64 --out out.h5 --checkpoint_every 4"
N=61
mkdir -p "$T/ref" "$T/u" "$T/t" "$T/k" "$T/r"
(cd "$T/ref" && mpirun_n 2 "$bin" $CMD) > "$T/ref/log" 2>&1
check "uninterrupted 2-rank run" test $? -eq 0 || tail -5 "$T/ref/log"

# start DIR NP: the command in the background in DIR; $! is mpiexec
start() { (cd "$1" && exec "$mpiexec" --allow-run-as-root --oversubscribe --bind-to none -n "$2" "$bin" $CMD) > "$1/log" 2>&1 & }
# wait_ckpt FILE PID: until FILE exists (the first periodic checkpoint) or PID ends
wait_ckpt() { while [ ! -e "$1" ] && kill -0 "$2" 2>/dev/null; do sleep 0.01; done; }
# interrupted DIR SIG STATUS SECONDS: the checks of an interrupted run
interrupted() {
  local d=$1 sig=$2 st=$3 secs=$4 s
  s=$(attr "$d/out.h5" points_done)
  if [ "$st" -eq 0 ]; then echo "note: the run finished before SIG$sig arrived"; return; fi
  echo "SIG$sig: checkpoint at point $s of $N after $secs s"
  check "SIG$sig: ends within 10 s ($secs s)" awk -v s="$secs" 'BEGIN { exit !(s < 10) }'
  check "SIG$sig: one-line message" grep -qF "interrupted by SIG$sig: checkpoint at point $s of $N written to out.h5; rerun the same command to resume" "$d/log"
  check "SIG$sig: out.h5 has complete = 0" test "$(attr "$d/out.h5" complete)" = 0
}
rerun() { # rerun DIR NP WHAT
  (cd "$1" && mpirun_n "$2" "$bin" $CMD) > "$1/log2" 2>&1
  check "$3: rerun succeeds" test $? -eq 0 || tail -5 "$1/log2"
  check "$3: rerun bitwise equal to the uninterrupted run" same_h5 "$T/ref/out.h5" "$1/out.h5"
}

# 1. SIGUSR1 to mpiexec
start "$T/u" 2; pid=$!
wait_ckpt "$T/u/out.h5" $pid; sleep "0.0$((RANDOM % 10))"
ts=$(now_ms); kill -USR1 $pid 2>/dev/null; wait $pid; st=$?
interrupted "$T/u" USR1 $st "$(awk -v d="$(( $(now_ms) - ts ))" 'BEGIN { printf "%.2f", d / 1000 }')"
if [ $st -ne 0 ]; then
  out=$(mpirun_n 1 "$bin" track-sweep "$T/u/out.h5" --sae "$F/sae.h5" --model "$F/base.h5" --acts "$F/acts.h5" --out "$T/u/ts.h5" 2>&1)
  check "track-sweep refuses the interrupted file" has "$out" "$T/u/out.h5: an interrupted sweep (complete = 0"
  out=$(mpirun_n 1 "$bin" sweep-combine "$T/u/out.h5" --out "$T/u/c.h5" 2>&1)
  check "sweep-combine refuses the interrupted file" has "$out" "$T/u/out.h5: an interrupted sweep (complete = 0"
  out=$(cd "$T/u" && mpirun_n 2 "$bin" $CMD --eval_windows 32 2>&1)
  check "a changed option cannot resume" has "$out" "out.h5: cannot resume: it was started with eval_windows = 64, this run has eval_windows = 32"
  check "the checkpoint is left as it was" test "$(attr "$T/u/out.h5" complete)" = 0
fi
rerun "$T/u" 2 "SIGUSR1"

# 2. SIGTERM to one rank only
start "$T/t" 2; pid=$!
wait_ckpt "$T/t/out.h5" $pid; sleep "0.0$((RANDOM % 10))"
victim=$(pgrep -P $pid | tail -1)
ts=$(now_ms); [ -n "$victim" ] && kill -TERM "$victim" 2>/dev/null; wait $pid; st=$?
interrupted "$T/t" TERM $st "$(awk -v d="$(( $(now_ms) - ts ))" 'BEGIN { printf "%.2f", d / 1000 }')"
rerun "$T/t" 2 "SIGTERM to one rank"

# 3. SIGKILL of a single process after a periodic checkpoint, resumed on 2 ranks
(cd "$T/k" && exec "$bin" $CMD) > "$T/k/log" 2>&1 & pid=$!
wait_ckpt "$T/k/out.h5" $pid; sleep "0.0$((RANDOM % 10))"; kill -KILL $pid 2>/dev/null; wait $pid 2>/dev/null
c=$(attr "$T/k/out.h5" complete)
echo "SIGKILL: periodic checkpoint of $(attr "$T/k/out.h5" points_done) points (complete = $c)"
[ "$c" = 0 ] || echo "note: the run finished before the kill"
rerun "$T/k" 2 "SIGKILL + resume on 2 ranks"

# 4. the reliability command (tests/reliability/signals.sh), SIGUSR1 at random moments
CMD="sweep $F/rec.yaml --param t --count 41 --domains $F/a.h5,$F/b.h5 --eval_windows 16 --out out.h5"
N=41
mkdir -p "$T/ref4"
t0=$(now_ms); (cd "$T/ref4" && mpirun_n 2 "$bin" $CMD) > "$T/ref4/log" 2>&1; dur=$(( $(now_ms) - t0 ))
check "reliability command: uninterrupted run ($dur ms)" test -f "$T/ref4/out.h5"
for i in 1 2; do
  d=$T/r$i; mkdir -p "$d"; rm -f "$d/out.h5"
  start "$d" 2; pid=$!
  sleep "$(awk -v d="$(( dur / 4 + RANDOM % (dur / 2) ))" 'BEGIN { printf "%.3f", d / 1000 }')"
  kill -USR1 $pid 2>/dev/null; wait $pid; st=$?
  c=$(attr "$d/out.h5" complete)
  if [ $st -eq 0 ]; then echo "note: try $i finished before SIGUSR1"
  elif [ "$c" = 0 ]; then
    s=$(attr "$d/out.h5" points_done); echo "try $i: checkpoint at point $s of 41"
    check "try $i: one-line message" grep -qF "interrupted by SIGUSR1: checkpoint at point $s of 41 written to out.h5; rerun the same command to resume" "$d/log"
  else
    echo "note: try $i: SIGUSR1 before the command's handlers (MPI start-up) or after the final write (complete = '$c')"
    check "try $i: no file that looks complete unless the final write happened" test -z "$c" -o "$c" = 1
  fi
  (cd "$d" && mpirun_n 2 "$bin" $CMD) > "$d/log2" 2>&1
  check "try $i: rerun succeeds" test $? -eq 0 || tail -5 "$d/log2"
  check "try $i: rerun bitwise equal to the uninterrupted run" same_h5 "$T/ref4/out.h5" "$d/out.h5"
done
ml_check_summary sweep_signals && rm -rf "$T"
