#!/usr/bin/env bash
# One writer per output and no output that is an input (issue #17 items 2 and 7),
# through the real executable on 2 ranks:
#  - a second `train` on the --out of a running one fails at once naming the
#    holder's pid; the first run's result equals an undisturbed run's bit for bit;
#  - stale locks (dead pid, reused pid, this Slurm job on another node) are taken
#    over with a warning; a live holder here or on another host is refused; of two
#    takers of one stale lock, the later is refused and the winner's lock kept;
#  - eval, capture, compare, merge, sae-eval: --out = an input, --out = a directory
#    and --out in a missing directory are refused before any work (capture, compare
#    and sae-eval create the directory of their output, as documented);
#  - `run` applies the same checks to each stage and locks RUN_DIR/experiment.h5.
set -u
. "${ML_SRC:?}/tests/common/ml_check.sh"
. "$ML_SRC/tests/reliability/lib.sh"
T=$(mktemp -d "${ML_TEST_TMP:-/tmp}/guard.XXXXXX")
F=$T/fixture
fixture "$F" || exit 1
host=$(hostname)
export ML_PROFILE=0 # no profile table (and none of its exit-time collectives)
# run2 CMD...: on 2 ranks in $PWD (at most 120 s); sets out and rc
run2() { out=$(timeout 120 "$mpiexec" --allow-run-as-root --oversubscribe --bind-to none -n 2 "$bin" "$@" 2>&1); rc=$?; }
# refused WHAT NEEDLE: exit 1 and exactly one error line, containing NEEDLE
refused() {
  check "$1: exit 1 (rc $rc)" test "$rc" -eq 1
  check "$1: one error line naming it" has "$(grep '^error:' <<<"$out")" "$2"
  check "$1: only one error line" test "$(grep -c '^error:' <<<"$out")" -eq 1
  check "$1: no MPI_Abort" bash -c "! grep -q MPI_ABORT <<<\"\$0\"" "$out"
}
lock_of() { printf 'mergelens lock\nhost=%s\npid=%s\nstart=%s\njob=%s\ncommand=mergelens test\nstarted=2026-01-01T00:00:00Z\nend\n' "$@"; }
proc_start() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $20 }'; }

# ---- two trainings on one output --------------------------------------------------------
TRAIN="train --domains $F/a.h5 --out out.h5 $MODEL_ARGS --steps 60 --checkpoint_every 20 --seed 7"
mkdir -p "$T/two/ref" "$T/two/run"
(cd "$T/two/ref" && mpirun_n 2 "$bin" $TRAIN) > "$T/two/ref.log" 2>&1
check "undisturbed training succeeds" test $? -eq 0
cd "$T/two/run"
setsid "$mpiexec" --allow-run-as-root --oversubscribe --bind-to none -n 2 "$bin" $TRAIN > ../first.log 2>&1 &
first=$!
while [ ! -s out.h5.lock ] && kill -0 $first 2>/dev/null; do sleep 0.05; done
holder=$(sed -n 's/^pid=//p' out.h5.lock)
# hold the first run where it is (its ranks stopped), so that it is surely running
ranks=$(pgrep -P "$(ps -o ppid= -p "$holder" | tr -d ' ')" -x mergelens)
kill -STOP $ranks
cp out.h5.lock ../lock.before
t0=$(now_ms)
run2 $TRAIN
refused "second train on the same --out" "in use by another run (host $host, pid $holder"
check "second train: message says how to remove a stale lock" has "$out" "rm ./out.h5.lock"
echo "  (refused in $(( $(now_ms) - t0 )) ms, mpiexec start-up included)"
check "second train: the first run's lock is untouched" cmp -s out.h5.lock ../lock.before
kill -CONT $ranks
wait $first
check "first train completes" test $? -eq 0 || tail -5 ../first.log
check "first train's model equals the undisturbed run's" same_h5 ../ref/out.h5 out.h5
check "first train released its lock" test ! -e out.h5.lock
check "the second run wrote nothing" bash -c "! ls -A | grep -v '^out.h5$'"

# ---- stale and live locks ---------------------------------------------------------------
mkdir -p "$T/locks" && cd "$T/locks"
EVAL="eval $F/base.h5 --domains $F/a.h5 --max_batches 2 --context 16 --out e.h5"
sleep 0 & dead=$!; wait $dead
lock_of "$host" "$dead" 777 "" > e.h5.lock
run2 $EVAL
check "dead holder: the run succeeds (rc $rc)" test $rc -eq 0
check "dead holder: taken over with a warning" has "$out" "taking over a stale lock (host $host, pid $dead"
check "dead holder: the lock is gone after the run" test ! -e e.h5.lock
rm -f e.h5
lock_of "$host" $$ 1 "" > e.h5.lock   # this shell's pid, another start time: a reused pid
run2 $EVAL
check "reused pid: taken over (rc $rc)" bash -c "[ $rc -eq 0 ] && grep -qF 'its process is gone' <<<\"\$0\"" "$out"
rm -f e.h5
lock_of "$host" $$ "$(proc_start $$)" "" > e.h5.lock   # alive, right start time
cp e.h5.lock lock.before
run2 $EVAL
refused "live holder on this host" "in use by another run (host $host, pid $$"
check "live holder on this host: lock unchanged, no output" bash -c "cmp -s e.h5.lock lock.before && [ ! -e e.h5 ]"
lock_of other-node.example 1 5 4242 > e.h5.lock
cp e.h5.lock lock.before
run2 $EVAL
refused "holder on another host" "in use by another run (host other-node.example, pid 1, Slurm job 4242"
check "holder on another host: lock unchanged, no output" bash -c "cmp -s e.h5.lock lock.before && [ ! -e e.h5 ]"
# two takers of one stale lock: A judges it stale and is stopped just before its takeover;
# B takes it over and runs; A, resumed, must find B's lock (moved aside, compared, put back)
rm -f t.h5 t.h5.lock; lock_of "$host" "$dead" 777 "" > t.h5.lock
TTRAIN="train --domains $F/a.h5 --out t.h5 $MODEL_ARGS --steps 40 --seed 7"
ML_GUARD_TEST_STOP=1 "$bin" $TTRAIN > a.log 2>&1 & ta=$!
while [ "$(sed 's/.*) //' /proc/$ta/stat 2>/dev/null | cut -c1)" != T ] && kill -0 $ta 2>/dev/null; do sleep 0.05; done
"$bin" $TTRAIN > b.log 2>&1 & tb=$!
while ! grep -q "^pid=$tb$" t.h5.lock 2>/dev/null && kill -0 $tb 2>/dev/null; do sleep 0.05; done
kill -STOP $tb; cp t.h5.lock lock.b
kill -CONT $ta; wait $ta; rc=$?
check "two takers: the later one is refused (rc $rc)" bash -c "[ $rc -eq 1 ] && grep -qF 'in use by another run (host $host, pid $tb' a.log" || cat a.log
check "two takers: the winner's lock is in place, unchanged" cmp -s t.h5.lock lock.b
check "two takers: no lock moved aside is left" bash -c "! ls | grep -q 'lock.stale'"
kill -CONT $tb; wait $tb; rc=$?
check "two takers: the winner completes and releases its lock (rc $rc)" bash -c "[ $rc -eq 0 ] && [ ! -e t.h5.lock ]"
# a requeued Slurm job on another node (1 rank: no mpiexec inside a fake Slurm job)
out=$(SLURM_JOB_ID=4242 "$bin" $EVAL 2>&1); rc=$?
check "same Slurm job on another node: taken over (rc $rc)" has "$out" "it is this Slurm job before a requeue"
out=$(SLURM_JOB_ID=4243 "$bin" eval $F/base.h5 --domains $F/a.h5 --max_batches 2 --context 16 --out e2.h5 2>&1)
check "a lock of another output does not matter" test $? -eq 0

# ---- outputs that are inputs, directories, or in missing directories --------------------
mkdir -p "$T/io" && cd "$T/io"
fresh() { cp "$F"/{a.h5,b.h5,base.h5,ft.h5,acts.h5,sae.h5} .; } # each case on intact inputs
fresh
printf 'models:\n  - model: %s/ft.h5\n  - model: %s/base.h5\nmerge_method: slerp\nbase_model: %s/ft.h5\nparameters:\n  t: 0.5\ndtype: float32\n' \
  "$PWD" "$PWD" "$PWD" > rec.yaml
mkdir -p adir
declare -A CMD CLASH
CMD[eval]="eval base.h5 --domains a.h5 --max_batches 2 --context 16"; CLASH[eval]=base.h5
CMD[capture]="capture base.h5 --domains a.h5,b.h5 --tokens 1024 --context 16"; CLASH[capture]=b.h5
CMD[compare]="compare --a sae.h5 --acts-a acts.h5 --b sae.h5 --acts_b=acts.h5"; CLASH[compare]=acts.h5
CMD[merge]="merge rec.yaml"; CLASH[merge]=ft.h5
CMD[sae-eval]="sae-eval sae.h5 --domains a.h5 --windows 8 --context 16"; CLASH[sae-eval]=sae.h5
for c in eval capture compare merge sae-eval; do
  fresh; sum=$(md5sum < "${CLASH[$c]}")
  run2 ${CMD[$c]} --out="${CLASH[$c]}"
  refused "$c --out ${CLASH[$c]} (an input)" "--out ${CLASH[$c]}: is also an input of this command"
  check "$c --out ${CLASH[$c]}: the input is unchanged" test "$(md5sum < "${CLASH[$c]}")" = "$sum"
  fresh; run2 ${CMD[$c]} --out adir
  refused "$c --out adir (a directory)" "--out adir: is a directory"
  check "$c --out adir: nothing left behind" bash -c "[ -z \"\$(ls -A adir)\" ] && ! ls | grep -q '^adir.'"
  fresh; run2 ${CMD[$c]} --out "nodir_$c/x.h5"
  case $c in
    merge)
      refused "$c --out nodir_$c/x.h5" "--out nodir_$c/x.h5: directory nodir_$c does not exist"
      check "$c --out nodir_$c/x.h5: nothing created" test ! -e "nodir_$c" ;;
    *) check "$c --out nodir_$c/x.h5: creates its directory and the output (rc $rc)" \
         bash -c "[ $rc -eq 0 ] && [ -f nodir_$c/x.h5 ] && [ ! -e nodir_$c/x.h5.lock ]" ;;
  esac
done
fresh; sum=$(md5sum < base.h5)
run2 train --init_from base.h5 --domains b.h5 --out base.h5 --steps 2 --global_batch 8 --context 16
check "train --init_from X --out X is refused (rc $rc)" test $rc -eq 1
check "train --init_from X --out X: X unchanged" test "$(md5sum < base.h5)" = "$sum"
fresh; t0=$(now_ms)
out=$(ML_LOG_LEVEL=info mpirun_n 2 "$bin" sweep rec.yaml --param t --count 5 --domains a.h5 --eval_windows 4 \
      --out nodir_sweep/s.h5 2>&1); rc=$?
refused "sweep --out nodir_sweep/s.h5" "--out nodir_sweep/s.h5: directory nodir_sweep does not exist"
check "sweep --out nodir_sweep/s.h5: no point evaluated, nothing written" \
  bash -c "! grep -q 'points x' <<<\"\$0\" && [ ! -e nodir_sweep ]" "$out"
echo "  (sweep refused in $(( $(now_ms) - t0 )) ms)"
# export hf SRC DIR: DIR is an output (positional); naming the model destroys nothing
fresh; sum=$(md5sum < ft.h5)
run2 export hf ft.h5 ft.h5
refused "export hf ft.h5 ft.h5" "DIR ft.h5: exists and is not a directory"
check "export hf ft.h5 ft.h5: the model is unchanged" test "$(md5sum < ft.h5)" = "$sum"
# import hf DIR OUT: every file of DIR is an input
run2 export hf ft.h5 hfdir
check "export hf ft.h5 hfdir succeeds (rc $rc)" test $rc -eq 0
sum=$(md5sum < hfdir/model.safetensors)
run2 import hf hfdir hfdir/model.safetensors
refused "import hf hfdir hfdir/model.safetensors" "OUT hfdir/model.safetensors: is also an input of this command (a file of hfdir)"
check "import into its own source: the source is unchanged" test "$(md5sum < hfdir/model.safetensors)" = "$sum"
# tokenize writes OUT_DIR/NAME.h5 per domain: a domain named like its tokenizer would replace it
cp "$F"/{tok.h5,st_a.txt} .
sum=$(md5sum < tok.h5)
run2 tokenize --tokenizer tok.h5 --out_dir . --domains "tok=text:st_a.txt"
refused "tokenize --out_dir . with a domain 'tok' next to tok.h5" "--out_dir ./tok.h5: is also an input of this command (tok.h5)"
check "tokenize: the tokenizer is unchanged" test "$(md5sum < tok.h5)" = "$sum"
# options read from --config count too
printf 'eval:\n  out: %s/base.h5\n' "$PWD" > cfg.yaml
fresh; sum=$(md5sum < base.h5)
run2 eval base.h5 --domains a.h5 --max_batches 2 --context 16 --config cfg.yaml
refused "eval with out: from --config" "is also an input of this command"
check "eval with out: from --config: the model is unchanged" test "$(md5sum < base.h5)" = "$sum"
fresh

# ---- `run`: each stage is guarded, and the run record is locked --------------------------
mkdir -p "$T/job" && cd "$T/job"
cat > job.yaml <<Y
name: guard
run_dir: $T/job/run
stages:
  ev:
    command: eval
    args: [$T/io/base.h5]
    options: {domains: $T/io/a.h5, max_batches: 2, context: 16, out: $T/io/base.h5}
    outputs: [ev.h5]
Y
sum=$(md5sum < "$T/io/base.h5")
run2 run job.yaml
check "run: a stage whose --out is an input fails (rc $rc)" \
  bash -c "[ $rc -eq 1 ] && grep -qF \"stage 'ev' (mergelens eval) failed: --out $T/io/base.h5: is also an input\" <<<\"\$0\"" "$out"
check "run: the stage's input is unchanged" test "$(md5sum < "$T/io/base.h5")" = "$sum"
sed -i "s#out: $T/io/base.h5}#out: $T/job/run/ev.h5}#" job.yaml
lock_of other-node.example 1 5 "" > run/experiment.h5.lock
run2 run job.yaml
refused "run while another run holds RUN_DIR/experiment.h5" "run record $T/job/run/experiment.h5: in use by another run"
check "run refused: the stage did not run" test ! -e run/ev.h5
run2 run job.yaml --plan
check "run --plan works while the run is locked (rc $rc)" test $rc -eq 0
rm run/experiment.h5.lock
run2 run job.yaml
check "run succeeds once the lock is gone (rc $rc)" bash -c "[ $rc -eq 0 ] && [ -f run/ev.h5 ] && [ ! -e run/experiment.h5.lock ] && [ ! -e run/ev.h5.lock ]"

cd /
ml_check_summary guard && rm -rf "$T"
