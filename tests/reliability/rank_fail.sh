#!/usr/bin/env bash
# A rank that dies never leaves the others hanging: on 2 ranks, one rank's
# process is killed (SIGKILL, then SIGSEGV as a crash) at a seeded random
# moment during training, SAE training and a sweep. The whole job must end
# within 30 s with a non-zero status and a message naming the dead rank and
# its signal, leave no process behind and no complete-looking output.
# (Failures injected with ML_INJECT_FAIL on one of four ranks, agreed and
# lone, are tested by tests/cli/test_cli.sh.)
set -u
. "${ML_SRC:?}/tests/common/ml_check.sh"
. "$ML_SRC/tests/reliability/lib.sh"
rel_begin rank_fail
declare -A CMD
# (long enough that the kill, 0.5-1.5 s after start-up, lands mid-run on a fast idle machine)
CMD[train]="train --domains $F/a.h5 --out out.h5 $MODEL_ARGS --steps 20000 --checkpoint_every 20"
CMD[sae]="sae $F/acts.h5 --out out.h5 --expansion 4 --batch 256 --lr 1e-3 --eval_rows 1024 --tokens 4194304"
CMD[sweep]="sweep $F/rec.yaml --param t --count 2001 --domains $F/a.h5,$F/b.h5 --eval_windows 16 --out out.h5"
for stage in train sae sweep; do
  for sig in KILL SEGV; do
    dir=$T/$stage.$sig; mkdir -p "$dir"
    session_start "$dir" 2 ${CMD[$stage]}; pid=$session_pid
    # the ranks are up once both processes exist; then wait a random 0.5-1.5 s
    while [ "$(pgrep -P $pid | wc -l)" -lt 2 ] && kill -0 $pid 2>/dev/null; do sleep 0.05; done
    sleep "$(awk -v r=$((RANDOM % 1000)) 'BEGIN { printf "%.3f", 0.5 + r / 1000 }')"
    ranks=($(pgrep -P $pid)); victim=""
    [ ${#ranks[@]} -gt 0 ] && victim=${ranks[$((RANDOM % ${#ranks[@]}))]}
    t0=$(now_ms)
    if [ -z "$victim" ] || ! kill -"$sig" "$victim" 2>/dev/null; then
      echo "note: $stage finished before the kill"; wait $pid; continue
    fi
    # bounded wait: 30 s, then report a hang (and clean up)
    while kill -0 $pid 2>/dev/null && [ $(( $(now_ms) - t0 )) -lt 30000 ]; do sleep 0.1; done
    if kill -0 $pid 2>/dev/null; then
      check "$stage: SIG$sig of one rank ends the job within 30 s (hung)" false
      session_kill "$dir" $pid; wait $pid; continue
    fi
    wait $pid; rc=$?
    secs=$(awk -v d=$(( $(now_ms) - t0 )) 'BEGIN { printf "%.1f", d / 1000 }')
    check "$stage: SIG$sig of one rank ends the job within 30 s ($secs s, status $rc)" test $rc -ne 0
    check "$stage: SIG$sig: message names the rank and the signal" \
      grep -qE "rank [0-9]+ with PID [0-9]+ on node .* exited on signal [0-9]+ \([A-Za-z ]+\)" "$dir/log" ||
      tail -5 "$dir/log" # (under ASan a SIGSEGV is reported by ASan, then signal 6 (Aborted))
    # a process of the job still running (zombies waiting to be reaped do not count)
    alive=$(session_pids "$dir" | wc -l)
    check "$stage: SIG$sig: no rank process left ($alive alive)" test "$alive" -eq 0
    session_clear "$dir"
    c=$( [ -e "$dir/out.h5" ] && attr "$dir/out.h5" complete )
    check "$stage: SIG$sig: no output claims to be complete (complete = '${c:-no file}')" test "${c:-0}" = 0
  done
done
ml_check_summary rank_fail && rm -rf "$T"
