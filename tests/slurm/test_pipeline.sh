#!/usr/bin/env bash
# slurm: the real pipeline through a real single-node Slurm (scripts/slurm-local.sh).
#  1. jobs/tiny.yaml submitted with slurm/submit (one batch job per stage, 2
#     MPI ranks each under srun): every stage COMPLETED, the outputs exist and
#     experiment.h5 records every stage as done;
#  2. preemption: a training-only job submitted with --requeue is preempted
#     while it trains (`scontrol requeue`: Slurm sends SIGTERM, mergelens
#     writes its checkpoint and the job goes back to the queue), then, in its
#     second run, signalled before its "time limit" (`scancel --batch
#     --signal=USR1`: the batch script forwards USR1, mergelens checkpoints,
#     the script requeues the job itself); the third run completes. Its final
#     /params and /optimizer equal bitwise (h5diff) those of the same
#     training run uninterrupted with mpiexec on the same 2 ranks.
# Exit 77 (skip) only when Slurm cannot be installed or started here.
set -u
src=${ML_SRC:?}; bin=${ML_BIN:?}; mpiexec=${ML_MPIEXEC:-mpiexec}
export ML_BIN=$bin
# the batch script's OpenBLAS kernel choice (slurm/templates/stage.sbatch), so
# that the uninterrupted mpiexec run sums in the same order as the Slurm jobs
if grep -q avx512f /proc/cpuinfo 2>/dev/null; then
  case "${OPENBLAS_CORETYPE:-}" in SkylakeX|Cooperlake|SapphireRapids) ;; *) export OPENBLAS_CORETYPE=SkylakeX ;; esac
fi
. "$src/tests/slurm/cluster_lib.sh"
ml_cluster_start mlslurm-pipe "${ML_SLURM_TEST_PORT:-6927}"
echo "  (cluster up after $((SECONDS - t_start)) s)"

rec() { scontrol show job -o "$1" 2>/dev/null; }
fld() { sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" <<<"$2"; }
state() { fld JobState "$(rec "$1")"; }
id_of() { awk -v s="$2" '$1 == s && $2 == "job" {print $3}' <<<"$1"; }

# ---- 1. jobs/tiny.yaml, one batch job per stage ----
tiny=$tmp/tiny
t0=$SECONDS
if ! "$src/scripts/make_demo_corpora.sh" "$tiny/corpora" --mb 0.3 --debs "${ML_TEST_TMP:-/tmp}/debs" > "$tmp/corpora.log" 2>&1; then
  echo "cannot build the demo corpora:"; tail -5 "$tmp/corpora.log"; exit 1
fi
echo "  (demo corpora in $((SECONDS - t0)) s)"
t0=$SECONDS
sub=$(cd "$src" && "$submit" jobs/tiny.yaml --out "$tiny" 2>&1); rc=$?
check "slurm/submit jobs/tiny.yaml" test $rc -eq 0
[ $rc -eq 0 ] || echo "$sub" | sed 's/^/  | /'
nstages=$(grep -c '^  [a-z_]* *job [0-9]' <<<"$sub")
check "one batch job per stage (26)" test "$nstages" = 26
st=$("$status" "$tiny" --wait --timeout 330); rc=$?
echo "  (tiny pipeline finished $((SECONDS - t0)) s after submission)"
check "slurm/status --wait: every stage COMPLETED" bash -c '[ $0 -eq 0 ] && [ "$(grep -c " COMPLETED" <<<"$1")" = 26 ]' "$rc" "$st"
[ $rc -eq 0 ] || echo "$st" | sed 's/^/  | /'
for f in models/base.h5 models/stories.h5 models/lua.h5 models/merge.h5 saes/base.h5 saes/stories.h5 saes/lua.h5 saes/merge.h5 \
         tracking/summary.h5 experiment.h5; do
  check "output $f" test -s "$tiny/$f"
done
check "the train stages ran on 2 MPI ranks under srun" bash -c 'grep -q "2 ranks" "$0"/slurm/logs/base-*.out' "$tiny"
ins=$("$bin" inspect "$tiny/experiment.h5" 2>/dev/null)
check "experiment.h5: all 26 stages done" bash -c '[ "$(grep -c "@status = \"done\"" <<<"$0")" = 26 ]' "$ins"
check "merged model has parameters" bash -c '"$0" inspect "$1" 2>/dev/null | grep -q lm_head.weight' "$bin" "$tiny/models/merge.h5"

# ---- 2. preemption during training, then USR1 before the time limit ----
# the tiny base model's shape, 300 steps, a checkpoint every 20 steps, on the
# token stores of part 1
cat > "$tmp/pre.yaml" <<EOF
name: pre
run_dir: $tmp/pre
seed: 7
slurm: {ntasks: 2, cpus_per_task: 1, time: "00:10:00"}
stages:
  base:
    command: train
    options: {domains: "$tiny/data/english.h5,$tiny/data/python.h5", out: "\${run_dir}/models/base.h5",
              d_model: 64, d_mlp: 128, n_heads: 4, n_kv_heads: 2, context: 64, global_batch: 16, steps: 300,
              lr: 3e-3, weight_decay: 0.1, eval_batches: 2, checkpoint_every: 20, seed: "\${seed}"}
    outputs: [models/base.h5]
EOF
ck=$tmp/pre/models/base.h5
ck_step() { "$bin" inspect "$ck" 2>/dev/null | sed -n 's/.*@step = \([0-9]*\).*/\1/p' | head -n 1; }
wait_ckpt() { # wait until the checkpoint holds a step > $1 (at most 60 s)
  local t=$SECONDS s
  while [ $((SECONDS - t)) -lt 60 ]; do
    s=$(ck_step); [ -n "$s" ] && [ "$s" -gt "$1" ] && { echo "$s"; return 0; }
    sleep 0.2
  done
  return 1
}
restarts() { rec "$1" | sed -n 's/.*Restarts=\([0-9]*\).*/\1/p' | head -n 1; }
wait_pending() { # wait until the job is back in the queue, then start it now
  local t=$SECONDS r
  while [ $((SECONDS - t)) -lt 60 ]; do [ "$(state "$1")" = PENDING ] && break; sleep 0.2; done
  # Slurm makes a requeued job eligible only ~2 min later; start it as soon as
  # the old step's slurmstepd is gone (its PMIx socket would clash otherwise)
  for _ in $(seq 300); do pgrep -f "slurmstepd: \[$1\." >/dev/null || break; sleep 0.2; done
  scontrol update JobId="$1" StartTime=now
  # the local test Slurm sometimes fails to launch the requeued batch job (it ends
  # FAILED without running its script): requeue it again, at most twice
  r=$(restarts "$1")
  for _ in 1 2; do
    # return as soon as the new run has started (its log line), or give up waiting after 15 s
    t=$SECONDS
    while [ $((SECONDS - t)) -lt 15 ]; do
      grep -q "restart $r," "$tmp/pre/slurm/logs/base-$1.out" 2>/dev/null && return 0
      case $(state "$1") in FAILED|CANCELLED|COMPLETED) break ;; esac
      sleep 0.1
    done
    { [ "$(state "$1")" = FAILED ] && ! grep -q "restart $r," "$tmp/pre/slurm/logs/base-$1.out" 2>/dev/null; } || return 0
    echo "  note: Slurm did not launch requeued job $1 (restart $r; $(rec "$1" | grep -o 'Reason=[^ ]*')); requeueing it again"
    scontrol requeue "$1"
    t=$SECONDS; while [ $((SECONDS - t)) -lt 60 ] && [ "$(state "$1")" != PENDING ]; do sleep 0.2; done
    scontrol update JobId="$1" StartTime=now
    r=$(restarts "$1")
  done
}
data_ok=0; [ -s "$tiny/data/english.h5" ] && [ -s "$tiny/data/python.h5" ] && data_ok=1
check "token stores from part 1 exist" test $data_ok = 1
if [ $data_ok = 1 ]; then
  t0=$SECONDS
  sub=$("$submit" "$tmp/pre.yaml" --requeue 2>&1)
  J=$(id_of "$sub" base)
  check "training job submitted with --requeue" test -n "$J"
  s1=$(wait_ckpt 0)
  check "first periodic checkpoint written (step ${s1:-none})" test -n "$s1"
  scontrol requeue "$J"
  wait_pending "$J"
  s2=$(ck_step)
  check "preempted (scontrol requeue): requeued, checkpoint at step ${s2:-none} < 300" bash -c \
    '[ "${0:-0}" -ge 1 ] && [ -n "$1" ] && [ "$1" -lt 300 ]' "$(restarts "$J")" "$s2"
  s3=$(wait_ckpt "${s2:-0}")
  check "second run resumed and checkpointed past step ${s2:-none} (step ${s3:-none})" test -n "$s3"
  r1=$(restarts "$J")
  scancel --batch --signal=USR1 "$J"
  wait_pending "$J"
  check "USR1 before the time limit: the job requeued itself" bash -c '[ "${0:-0}" -gt "${1:-0}" ]' "$(restarts "$J")" "$r1"
  "$status" "$tmp/pre" --wait --timeout 120 >/dev/null
  echo "  (preempted training finished $((SECONDS - t0)) s after submission)"
  check "training job COMPLETED" test "$(state "$J")" = COMPLETED
  log=$(cat "$tmp/pre/slurm/logs/base-$J.out" 2>/dev/null)
  [ "$(state "$J")" = COMPLETED ] || { echo "--- job $J ($(state "$J")), end of its log:"; tail -n 40 <<<"$log"; echo "---"; }
  check "log: three runs (restart 0 and two restarts)" bash -c '[ "$(grep -c "restart [0-9]*," <<<"$0")" -ge 3 ] && grep -q "restart 0," <<<"$0"' "$log"
  check "log: SIGTERM checkpoint on preemption" has "$log" "interrupted by SIGTERM: checkpoint at step"
  check "log: USR1 forwarded, checkpoint, self-requeue" bash -c \
    'grep -q "got SIGUSR1, forwarding it to srun" <<<"$0" && grep -q "interrupted by SIGUSR1: checkpoint at step" <<<"$0" &&
     grep -q "interrupted by SIGUSR1, checkpoint written (exit 75); requeueing job $1" <<<"$0"' "$log" "$J"
  check "log: two resumes" test "$(grep -c "train: resuming" <<<"$log")" = 2
  check "log: the last run ends with exit 0" bash -c '[ "$(tail -n 1 <<<"$0" | grep -c "exit 0")" = 1 ]' "$log"
  check "checkpoint complete after 300 steps" bash -c '"$0" inspect "$1" 2>/dev/null | grep -q "@complete = 1"' "$bin" "$ck"

  t0=$SECONDS
  # the batch script's environment (one OpenBLAS thread per rank): the same
  # summation order as under srun
  OPENBLAS_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE HDF5_USE_FILE_LOCKING=FALSE \
  "$mpiexec" --allow-run-as-root --oversubscribe --bind-to none -n 2 "$bin" run "$tmp/pre.yaml" --out "$tmp/ref" \
    > "$tmp/ref.log" 2>&1; rc=$?
  echo "  (uninterrupted run: $((SECONDS - t0)) s)"
  check "uninterrupted run with mpiexec" test $rc -eq 0
  ref=$tmp/ref/models/base.h5
  for g in /params /optimizer /train/log/loss; do
    h5diff -r "$ck" "$ref" "$g" "$g" > "$tmp/h5diff.out" 2>&1; rc=$?
    check "preempted run equals the uninterrupted one bitwise: $g" bash -c '[ $0 -eq 0 ] || { head -n 8 "$1"; exit 1; }' "$rc" "$tmp/h5diff.out"
  done
fi

echo "slurm pipeline: $pass passed, $fail failed, $((SECONDS - t_start)) s"
[ $fail -eq 0 ]
