#!/usr/bin/env bash
# Preemption of `mergelens capture` on NP ranks (docs/modules/capture.md,
# "Preemption and resume"):
#  - --raise_at 11 (float32 and float16): non-zero exit, the one-line
#    "interrupted by SIGUSR1: checkpoint at batch K of 125 written to out.h5;
#    rerun the same command to resume", out.h5 left with complete = 0,
#    batches_done = K, format mergelens.activations.incomplete, no temporary;
#  - the sae reader refuses that file with a one-line error;
#  - a changed option on rerun: "cannot resume", the checkpoint unchanged (md5);
#  - rerun: status 0 and a file bitwise equal (h5diff, /profile excluded) to an
#    uninterrupted run on the same ranks; float16 reruns the same command
#    (with --raise_at: it does not raise again) and the config attribute then
#    differs only by raise_at;
#  - 2 ranks: a 1-rank checkpoint resumed on 2 ranks is bitwise equal too;
#  - 1 rank: --resume false starts over;
#  - a longer run with --checkpoint_every 10: kill -9 of every process at a
#    seeded random moment leaves nothing, a complete = 0 checkpoint or the
#    finished file, and the rerun is bitwise equal; a real signal (np 1:
#    SIGUSR1 to the process, np 2: SIGTERM to every rank, as Slurm does) gives
#    the checkpoint and message, and the rerun is bitwise equal.
#  - 1 rank: a checkpoint killed while finishing (every row written, flags
#    not flipped, batches_done stale) is finished by the rerun, bitwise equal;
# Usage: test_signals.sh FIXTURE_BIN NP H5POKE_BIN
set -u
. "${ML_SRC:?}/tests/common/ml_check.sh"
. "$ML_SRC/tests/reliability/lib.sh" # same_h5, attr, mpirun_n, now_ms
FIXTURE=$1 NP=$2 POKE=$3 # POKE: tests/reliability/h5poke
T=$(mktemp -d "${ML_TEST_TMP:-/tmp}/capture_signals.np$NP.XXXXXX")
"$FIXTURE" "$T" || { echo "fixture failed"; exit 1; }
RANDOM=${ML_FAULT_SEED:-12}

# cap DIR ARGS...: `mergelens capture` in $T/DIR (created) on NP ranks, output in $T/DIR/log
cap() {
  local d=$T/$1; shift
  mkdir -p "$d"
  if [ "$NP" = 1 ]; then (cd "$d" && exec "$bin" capture "$@") > "$d/log" 2>&1
  else (cd "$d" && mpirun_n "$NP" "$bin" capture "$@") > "$d/log" 2>&1; fi
}
# root attributes except `config` (h5dump text)
attrs_but_config() {
  h5dump -A "$1" | sed 1d | awk '/ATTRIBUTE "config" \{/ { skip = 1; d = 0 }
    skip { d += gsub(/\{/, "{") - gsub(/\}/, "}"); if (d <= 0) skip = 0; next } { print }'
}
same_but_config() {
  h5diff -r --exclude-path /profile --exclude-attribute / "$1" "$2" > /dev/null &&
    diff <(attrs_but_config "$1") <(attrs_but_config "$2") > /dev/null
}
config_of() { h5dump -a /config "$1" | sed -n 's/^ *(0): *//p'; }
checkpoint_left() { # DIR K: out.h5 in DIR is the checkpoint at batch K
  check "$1: out.h5 says complete = 0" test "$(attr "$T/$1/out.h5" complete)" = 0
  check "$1: batches_done = $2" test "$(attr "$T/$1/out.h5" batches_done)" = "$2"
  check "$1: format mergelens.activations.incomplete" test "$(attr "$T/$1/out.h5" format)" = mergelens.activations.incomplete
  check "$1: no temporary file left" test -z "$(ls "$T/$1" | grep '\.tmp\.')"
}

IN="../model.h5 --domains ../a.h5,../b.h5 --context 8"
ARGS="$IN --batch 4 --tokens 4000 --hook blocks.0.mlp.hook_post,blocks.1.hook_resid_post --out out.h5" # 125 batches
K=$(( NP == 1 ? 11 : 12 )) # the step holding batch 11 ends at batch 11 (1 rank) or 12 (2 ranks)
MSG="interrupted by SIGUSR1: checkpoint at batch $K of 125 written to out.h5; rerun the same command to resume"

for dt in float32 float16; do
  t0=$(now_ms)
  cap ref_$dt $ARGS --dtype $dt; rc=$?
  check "$dt: uninterrupted run ($(( $(now_ms) - t0 )) ms)" test $rc -eq 0 || tail -3 "$T/ref_$dt/log"
  check "$dt: uninterrupted file complete = 1" test "$(attr "$T/ref_$dt/out.h5" complete)" = 1
  cap sig_$dt $ARGS --dtype $dt --raise_at 11; rc=$?
  check "$dt: --raise_at 11 exits non-zero ($rc)" test $rc -ne 0
  check "$dt: one-line message" has "$(grep '^error:' "$T/sig_$dt/log")" "error: $MSG"
  checkpoint_left sig_$dt $K
done

# a reader refuses the checkpoint
(cd "$T/sig_float32" && "$bin" sae out.h5 --out s.h5) > "$T/sae.log" 2>&1; rc=$?
check "sae on the checkpoint fails ($rc)" test $rc -ne 0
check "sae: one-line error" has "$(cat "$T/sae.log")" \
  "error: out.h5: is a 'mergelens.activations.incomplete' file, expected 'mergelens.activations'"
check "sae: no output" test ! -e "$T/sig_float32/s.h5"

# a changed option leaves the checkpoint alone
sum=$(md5sum < "$T/sig_float32/out.h5")
cap sig_float32 ${ARGS/--tokens 4000/--tokens 4096}; rc=$?
check "changed --tokens: refused ($rc)" test $rc -ne 0
check "changed --tokens: message" has "$(cat "$T/sig_float32/log")" \
  "error: out.h5: cannot resume: it was started with tokens = 4000, this run has tokens = 4096 (rerun with the original options, or --resume false to start over)"
check "changed --tokens: checkpoint unchanged" test "$(md5sum < "$T/sig_float32/out.h5")" = "$sum"

# rerun: bitwise equal to the uninterrupted run
ML_LOG_LEVEL=info cap sig_float32 $ARGS --dtype float32; rc=$?
check "float32: rerun succeeds" test $rc -eq 0 || tail -3 "$T/sig_float32/log"
check "float32: rerun resumed at batch $K" grep -q "capture: resuming out.h5 at batch $K of 125" "$T/sig_float32/log"
check "float32: rerun bitwise equal to the uninterrupted run" same_h5 "$T/ref_float32/out.h5" "$T/sig_float32/out.h5"
cap sig_float16 $ARGS --dtype float16 --raise_at 11; rc=$?
check "float16: the same command (with --raise_at) resumes" test $rc -eq 0 || tail -3 "$T/sig_float16/log"
check "float16: finished (complete = 1, format mergelens.activations)" \
  test "$(attr "$T/sig_float16/out.h5" complete)/$(attr "$T/sig_float16/out.h5" format)" = 1/mergelens.activations
check "float16: rows and attributes bitwise equal but config" same_but_config "$T/ref_float16/out.h5" "$T/sig_float16/out.h5"
check "float16: config differs only by raise_at" \
  test "$(config_of "$T/sig_float16/out.h5" | sed 's/"raise_at":11/"raise_at":0/')" = "$(config_of "$T/ref_float16/out.h5")"

# a checkpoint written by 1 rank resumes on 2 (batch b is the same work for any rank count)
[ "$NP" = 2 ] && {
mkdir -p "$T/cross"
(cd "$T/cross" && exec "$bin" capture $ARGS --raise_at 11) > "$T/cross/log" 2>&1
check "1-rank checkpoint at batch 11" test "$(attr "$T/cross/out.h5" batches_done)" = 11
cap cross $ARGS; rc=$?
check "resumed on 2 ranks: succeeds" test $rc -eq 0 || tail -3 "$T/cross/log"
check "resumed on 2 ranks: bitwise equal to the uninterrupted 2-rank run" same_h5 "$T/ref_float32/out.h5" "$T/cross/out.h5"
}

# killed while finishing in place (rows and /profile flushed, flags not yet flipped): the checkpoint
# says 100 of 125 batches; the rerun rewrites batches 100..124, keeps /profile and finishes (1 rank)
[ "$NP" = 1 ] && {
mkdir -p "$T/finish" && cp "$T/ref_float32/out.h5" "$T/finish/out.h5"
"$POKE" "$T/finish/out.h5" attr-str / format mergelens.activations.incomplete &&
  "$POKE" "$T/finish/out.h5" attr-int / complete 0 && "$POKE" "$T/finish/out.h5" attr-int / batches_done 100
ML_LOG_LEVEL=info cap finish $ARGS; rc=$?
check "killed finish: rerun succeeds" test $rc -eq 0 || tail -3 "$T/finish/log"
check "killed finish: resumed at batch 100" grep -q "capture: resuming out.h5 at batch 100 of 125" "$T/finish/log"
check "killed finish: bitwise equal to the uninterrupted run" same_h5 "$T/ref_float32/out.h5" "$T/finish/out.h5"
}

# --resume false starts over (1 rank)
[ "$NP" = 1 ] && {
cap over $ARGS --raise_at 3 > /dev/null
ML_LOG_LEVEL=info cap over $ARGS --resume false; rc=$?
check "--resume false: succeeds" test $rc -eq 0
check "--resume false: equal to the uninterrupted run but config" same_but_config "$T/ref_float32/out.h5" "$T/over/out.h5"
check "--resume false: said so and did not resume" test "$(grep -c 'resume false: starting over' "$T/over/log")/$(grep -c 'resuming' "$T/over/log")" = 1/0
}

# longer runs (313 batches) with periodic checkpoints: kill -9, then a real signal
LONG="$IN --batch 16 --tokens 40000 --out out.h5 --checkpoint_every 10"
t0=$(now_ms)
cap long_ref $LONG; rc=$?
dur=$(( $(now_ms) - t0 ))
check "long: uninterrupted run ($dur ms)" test $rc -eq 0
mkdir -p "$T/kill"
delay=$(( dur / 5 + RANDOM % (dur / 2) ))
if [ "$NP" = 1 ]; then setsid bash -c "cd '$T/kill' && exec '$bin' capture $LONG" > "$T/kill/log" 2>&1 &
else setsid bash -c "cd '$T/kill' && exec '$mpiexec' --allow-run-as-root --oversubscribe --bind-to none -n $NP '$bin' capture $LONG" > "$T/kill/log" 2>&1 & fi
pid=$!
sleep "$(awk -v d="$delay" 'BEGIN { printf "%.3f", d / 1000 }')"
kill -KILL -- -"$pid" 2>/dev/null; wait "$pid" 2>/dev/null
f=$T/kill/out.h5
if [ ! -e "$f" ]; then state="nothing under the output name"; check "kill -9 at $delay ms: $state" true
elif [ "$(attr "$f" complete)" = 0 ]; then
  state="checkpoint at batch $(attr "$f" batches_done)"
  check "kill -9 at $delay ms: $state (format $(attr "$f" format))" test "$(attr "$f" format)" = mergelens.activations.incomplete
else state="finished file"; check "kill -9 at $delay ms: a finished file equals the uninterrupted one" same_h5 "$T/long_ref/out.h5" "$f"; fi
cap kill $LONG; rc=$?
check "kill -9 ($state): rerun succeeds" test $rc -eq 0 || tail -3 "$T/kill/log"
check "kill -9 ($state): rerun bitwise equal" same_h5 "$T/long_ref/out.h5" "$f"

sig=$([ "$NP" = 1 ] && echo USR1 || echo TERM)
mkdir -p "$T/real"
(cd "$T/real" && exec "$mpiexec" --allow-run-as-root --oversubscribe --bind-to none -n "$NP" "$bin" capture $LONG) > "$T/real/log" 2>&1 &
pid=$!
# a signal during setup keeps its default action: wait for the loop (the first periodic checkpoint)
while [ ! -e "$T/real/out.h5" ] && kill -0 $pid 2>/dev/null; do sleep 0.02; done
sleep "$(awk -v d="$(( RANDOM % (dur / 4) ))" 'BEGIN { printf "%.3f", d / 1000 }')"
ts=$(now_ms)
if [ "$sig" = TERM ]; then kill -TERM $(pgrep -P $pid) 2>/dev/null; else kill -USR1 $pid 2>/dev/null; fi
wait $pid; rc=$?
secs=$(( $(now_ms) - ts ))
if [ $rc -eq 0 ]; then
  echo "note: the long run finished before SIG$sig arrived"
else
  b=$(attr "$T/real/out.h5" batches_done)
  check "SIG$sig: the job ends within 10 s ($secs ms, status $rc)" test $secs -lt 10000
  check "SIG$sig: message" has "$(cat "$T/real/log")" \
    "error: interrupted by SIG$sig: checkpoint at batch $b of 313 written to out.h5; rerun the same command to resume"
  checkpoint_left real "$b"
fi
cap real $LONG; rc=$?
check "SIG$sig: rerun succeeds" test $rc -eq 0 || tail -3 "$T/real/log"
check "SIG$sig: rerun bitwise equal" same_h5 "$T/long_ref/out.h5" "$T/real/out.h5"

ml_check_summary "capture_signals.np$NP" && rm -rf "$T"
