#!/usr/bin/env bash
# Real kills and signals against `train` (through the train_cli driver):
#  1. one process killed with SIGKILL at a random moment after its first
#     periodic checkpoint, then rerun: /params and /optimizer bitwise equal to
#     an uninterrupted run's (h5diff), and the killed file said complete = 0;
#  2. 2 ranks, SIGUSR1 sent to mpiexec (Slurm --signal / preemption): exit
#     status 3 (ML_ERR_INTERRUPTED), the message names the step and how to
#     resume, then rerun: bitwise equal to an uninterrupted 2-rank run;
#  3. 2 ranks, SIGTERM sent to ONE rank's process only: the ranks agree at the
#     next step, same checks.
# Usage: test_signals.sh TRAIN_CLI
set -u
CLI=$1
MPI=${ML_MPIEXEC:-mpiexec}
T=${ML_TEST_TMP:-/tmp}/train_signals-$$
rm -rf "$T"; mkdir -p "$T"
pass=0; fail=0
ok() { pass=$((pass + 1)); }
bad() { echo "FAIL: $*" >&2; fail=$((fail + 1)); }
run() { "$MPI" --allow-run-as-root --oversubscribe --bind-to none -n "$1" "${@:2}"; }
# start NP ARGS...: like run, in the background, with $! the mpiexec process itself
start() { "$MPI" --allow-run-as-root --oversubscribe --bind-to none -n "$@" > "$T/log" 2>&1 & }
attr() { h5dump -a "$2" "$1" 2>/dev/null | sed -n 's/^ *(0): *//p' | head -1; }
same() { # same FILE_A FILE_B WHAT
  if h5diff -q "$1" "$2" /params /params && h5diff -q "$1" "$2" /optimizer /optimizer &&
     h5diff -q "$1" "$2" /train/log/loss /train/log/loss; then ok; else bad "$3: differs from the uninterrupted run"; fi
}
# wait_ckpt FILE PID: until FILE exists (first periodic checkpoint) or PID ends
wait_ckpt() { while [ ! -e "$1" ] && kill -0 "$2" 2>/dev/null; do sleep 0.02; done; }
rand_sleep() { sleep "0.$(printf '%02d' $((RANDOM % 10)))"; }

export ML_LOG_LEVEL=warn
"$CLI" mkstore "$T/a.h5" alpha 64 20000 400 > /dev/null || { echo "mkstore failed"; exit 1; }
ARGS="--domains $T/a.h5 --d_model 32 --d_mlp 64 --n_heads 4 --n_kv_heads 2 --context 16 --global_batch 8 \
--steps 60 --lr 1e-2 --warmup 10 --eval_every 25 --eval_batches 2 --checkpoint_every 6"

# 1. SIGKILL of a single process
"$CLI" train $ARGS --out "$T/full1.h5" > "$T/log" 2>&1 || { bad "uninterrupted run"; cat "$T/log" >&2; }
"$CLI" train $ARGS --out "$T/k.h5" > "$T/log" 2>&1 & pid=$!
wait_ckpt "$T/k.h5" $pid; rand_sleep; kill -KILL $pid 2>/dev/null; wait $pid 2>/dev/null
c=$(attr "$T/k.h5" /complete); s=$(attr "$T/k.h5" /train/step)
echo "SIGKILL: checkpoint at step $s (complete = $c)"
[ "$c" = 0 ] && ok || echo "note: the run finished before the kill (complete = $c); resume is trivially exact"
"$CLI" train $ARGS --out "$T/k.h5" > "$T/log" 2>&1 && ok || { bad "resume after SIGKILL"; cat "$T/log" >&2; }
[ "$(attr "$T/k.h5" /complete)" = 1 ] && ok || bad "resumed file not complete"
same "$T/full1.h5" "$T/k.h5" "SIGKILL + resume"

# 2. SIGUSR1 to mpiexec, 2 ranks
run 2 "$CLI" train $ARGS --out "$T/full2.h5" > "$T/log" 2>&1 || { bad "uninterrupted 2-rank run"; cat "$T/log" >&2; }
start 2 "$CLI" train $ARGS --out "$T/u.h5"; pid=$!
wait_ckpt "$T/u.h5" $pid; rand_sleep; kill -USR1 $pid 2>/dev/null; wait $pid; st=$?
s=$(attr "$T/u.h5" /train/step)
if [ "$(attr "$T/u.h5" /complete)" = 0 ]; then
  echo "SIGUSR1: checkpoint at step $s"
  [ $st -ne 0 ] && ok || bad "SIGUSR1: exit status 0"
  grep -q "interrupted by SIGUSR1: checkpoint at step $s of 60 written to $T/u.h5; rerun the same command to resume" \
    "$T/log" && ok || { bad "SIGUSR1 message"; cat "$T/log" >&2; }
else
  echo "note: the 2-rank run finished before SIGUSR1 arrived"
fi
run 2 "$CLI" train $ARGS --out "$T/u.h5" > "$T/log" 2>&1 && ok || { bad "resume after SIGUSR1"; cat "$T/log" >&2; }
same "$T/full2.h5" "$T/u.h5" "SIGUSR1 + resume"

# 3. SIGTERM to one rank only
start 2 "$CLI" train $ARGS --out "$T/t.h5"; pid=$!
wait_ckpt "$T/t.h5" $pid; rand_sleep
victim=$(pgrep -P $pid | tail -1)
[ -n "$victim" ] && kill -TERM "$victim" 2>/dev/null; wait $pid; st=$?
s=$(attr "$T/t.h5" /train/step)
if [ "$(attr "$T/t.h5" /complete)" = 0 ]; then
  echo "SIGTERM to one rank: checkpoint at step $s"
  [ $st -ne 0 ] && ok || bad "SIGTERM: exit status 0"
  grep -q "interrupted by SIGTERM: checkpoint at step $s of 60" "$T/log" && ok || { bad "SIGTERM message"; cat "$T/log" >&2; }
else
  echo "note: the 2-rank run finished before SIGTERM arrived"
fi
run 2 "$CLI" train $ARGS --out "$T/t.h5" > "$T/log" 2>&1 && ok || { bad "resume after SIGTERM"; cat "$T/log" >&2; }
same "$T/full2.h5" "$T/t.h5" "SIGTERM + resume"

echo "train_signals: $pass passed, $fail failed"
[ $fail -eq 0 ] && rm -rf "$T"
[ $fail -eq 0 ]
