#!/usr/bin/env bash
# slurm: slurm/submit against a real single-node Slurm (scripts/slurm-local.sh).
#  - a 3-stage job (one stage a 3-task array, one on 2 MPI ranks) runs every
#    stage to COMPLETED in dependency order with the requested resources and
#    writes experiment.h5;
#  - a failing stage fails, its dependents are cancelled without running
#    (DependencyNeverSatisfied), an independent stage still completes, and
#    submit/status say which;
#  - with --requeue, USR1 to the batch shell reaches every task through srun,
#    the job requeues itself and the stage and its dependent complete;
#  - sbatch's own refusal is a one-line error.
# Jobs are waited for by polling `squeue -h -j IDS` every 0.2 s; states come
# from `scontrol show job`. Exit 77 (skip) only when Slurm cannot be installed
# or started here.
set -u
src=${ML_SRC:?}; bin=${ML_BIN:?}
export ML_BIN=$bin
. "$src/tests/slurm/cluster_lib.sh"
ml_cluster_start mlslurm-test "${ML_SLURM_TEST_PORT:-6917}"
check "slurm-local.sh start prints SLURM_CONF" test "${SLURM_CONF:-}" = "$ML_SLURM_DIR/slurm.conf"
check "slurm-local.sh status" "$local" status >/dev/null 2>&1
again=$("$local" start 2>&1)
check "a second start finds the running cluster" has "$again" "already running in $ML_SLURM_DIR"
echo "  (cluster up after $((SECONDS - t_start)) s)"

# ---- helpers ----
ids_of() { awk '$2 == "job" {print $3}' <<<"$1" | paste -sd, -; }
id_of() { awk -v s="$2" '$1 == s && $2 == "job" {print $3}' <<<"$1"; }
wait_jobs() { # comma-separated ids; poll squeue every 0.2 s, at most 90 s
  local t0=$SECONDS
  while [ -n "$(squeue -h -j "$1" 2>/dev/null)" ]; do
    [ $((SECONDS - t0)) -lt 90 ] || { echo "  timeout waiting for $1"; squeue; return 1; }
    sleep 0.2
  done
}
rec() { scontrol show job -o "$1" 2>/dev/null; }             # one line per (array) job record
fld() { sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" <<<"$2" | sort; }
state() { fld JobState "$(rec "$1")" | sort -u | paste -sd, -; }

# ---- 1. a pipeline with an array stage and a 2-rank stage ----
cat > "$tmp/pipe.yaml" <<EOF
name: pipe
run_dir: $tmp/pipe
slurm: {time: "00:05:00", ntasks: 1}
stages:
  combine: {command: doctor, needs: [sweep], options: {gemm_n: 64, dir: "\${run_dir}"}, slurm: {ntasks: 2, time: "00:04:00"}}
  prep: {command: doctor, options: {gemm_n: 64, dir: "\${run_dir}"}}
  sweep: {command: doctor, needs: [prep], options: {gemm_n: 64, dir: "\${run_dir}/t\${task}"}, files: {"t\${task}/.keep": ""}, slurm: {array: 3}}
EOF
# ---- 2. a failing stage (its HDF5 test directory does not exist) ----
cat > "$tmp/fail.yaml" <<EOF
name: fail
run_dir: $tmp/fail
stages:
  a: {command: doctor, options: {gemm_n: 64, dir: "\${run_dir}"}}
  bad: {command: doctor, needs: [a], options: {gemm_n: 64, dir: /nonexistent/dir}}
  c: {command: doctor, needs: [bad], options: {gemm_n: 64, dir: "\${run_dir}"}}
  d: {command: doctor, needs: [c, a], options: {gemm_n: 64, dir: "\${run_dir}"}}
  e: {command: doctor, needs: [a], options: {gemm_n: 64, dir: "\${run_dir}"}}
EOF
t0=$SECONDS
pipe=$("$submit" "$tmp/pipe.yaml" 2>&1); prc=$?
failo=$("$submit" "$tmp/fail.yaml" 2>&1); frc=$?
check "submit succeeds" test $prc -eq 0 -a $frc -eq 0
check "submit prints each stage's job id" bash -c '[ -n "$0" ] && [ -n "$1" ] && [ -n "$2" ]' \
  "$(id_of "$pipe" prep)" "$(id_of "$pipe" sweep)" "$(id_of "$pipe" combine)"
check "submit prints how to watch" has "$pipe" "squeue -j $(ids_of "$pipe")"
check "submit says what a failure cancels" has "$failo" "if bad fails, Slurm cancels: c, d"
wait_jobs "$(ids_of "$pipe"),$(ids_of "$failo")"
echo "  (both jobs finished $((SECONDS - t0)) s after submission)"

P=$(id_of "$pipe" prep) S=$(id_of "$pipe" sweep) C=$(id_of "$pipe" combine)
check "all stages COMPLETED" test "$(state "$P")/$(state "$S")/$(state "$C")" = "COMPLETED/COMPLETED/COMPLETED"
check "array stage ran tasks 0,1,2" test "$(fld ArrayTaskId "$(rec "$S")" | paste -sd, -)" = "0,1,2"
prep_end=$(fld EndTime "$(rec "$P")")
sweep_first=$(fld StartTime "$(rec "$S")" | head -n 1)
sweep_last=$(fld EndTime "$(rec "$S")" | tail -n 1)
comb_start=$(fld StartTime "$(rec "$C")")
check "sweep started after prep ended" bash -c '[[ ! "$1" < "$0" ]]' "$prep_end" "$sweep_first"
check "combine started after the last sweep task ended" bash -c '[[ ! "$1" < "$0" ]]' "$sweep_last" "$comb_start"
check "stage resources: 2 tasks, 4 min" bash -c '[ "$0" = 2 ] && [ "$1" = 00:04:00 ]' \
  "$(fld NumTasks "$(rec "$C")")" "$(fld TimeLimit "$(rec "$C")")"
check "job-level resources: 1 task, 5 min" bash -c '[ "$0" = 1 ] && [ "$1" = 00:05:00 ]' \
  "$(fld NumTasks "$(rec "$P")")" "$(fld TimeLimit "$(rec "$P")")"
check "combine ran on 2 MPI ranks" grep -q "mergelens 0.1.0: 2 ranks" "$tmp/pipe/slurm/logs/combine-$C.out"
check "array tasks saw SLURM_ARRAY_TASK_ID" bash -c 'for k in 0 1 2; do grep -q "(array task $k)" "$0"/sweep-$1_$k.out || exit 1; done' \
  "$tmp/pipe/slurm/logs" "$S"
check "experiment.h5 written" bash -c '"$0" inspect "$1" 2>/dev/null | grep -q "@format = \"mergelens.experiment\""' \
  "$bin" "$tmp/pipe/experiment.h5"
st=$("$status" "$tmp/pipe"); rc=$?
check "slurm/status: all completed" bash -c '[ $0 -eq 0 ] && grep -q "^sweep .*COMPLETEDx3 *3 array tasks" <<<"$1"' "$rc" "$st"

A=$(id_of "$failo" a) B=$(id_of "$failo" bad) Cc=$(id_of "$failo" c) D=$(id_of "$failo" d) E=$(id_of "$failo" e)
check "failing stage FAILED" test "$(state "$B")" = FAILED
check "its dependents were cancelled, never satisfied" bash -c 'for r in "$0" "$1"; do
  grep -q "JobState=CANCELLED Reason=DependencyNeverSatisfied" <<<"$r" || exit 1; done' "$(rec "$Cc")" "$(rec "$D")"
check "cancelled stages never ran" bash -c '! ls "$0"/c-*.out "$0"/d-*.out 2>/dev/null' "$tmp/fail/slurm/logs"
check "independent stages completed" test "$(state "$A")/$(state "$E")" = "COMPLETED/COMPLETED"
st=$("$status" "$tmp/fail"); rc=$?
check "slurm/status names the failure and what it blocked" bash -c '[ $0 -eq 1 ] &&
  grep -q "^bad .*FAILED .*error: stage .bad. (mergelens doctor) failed: /nonexistent/dir" <<<"$1" &&
  grep -q "^c .*CANCELLED .*never ran: bad FAILED (DependencyNeverSatisfied)" <<<"$1" &&
  grep -q "^d .*CANCELLED .*never ran: c CANCELLED" <<<"$1"' "$rc" "$st"

# ---- 3. --requeue: USR1 before the time limit -> forwarded, requeued, resumed ----
# A stand-in for mergelens: on the first run (restart 0) the stage 'slow'
# waits for USR1 and exits 75 (interrupted, checkpoint written) like a trainer; afterwards it is
# the real binary.
cat > "$tmp/fake-mergelens" <<EOF
#!/bin/bash
if [[ " \$* " == *" --stage slow "* ]] && [ "\${SLURM_RESTART_COUNT:-0}" = 0 ]; then
  trap 'echo "task \$SLURM_PROCID got USR1" >> "$tmp/signals"; exit 75' USR1
  touch "$tmp/slow.\$SLURM_PROCID"
  for i in \$(seq 600); do sleep 0.1; done
  exit 0
fi
exec "$bin" "\$@"
EOF
chmod +x "$tmp/fake-mergelens"
cat > "$tmp/rq.yaml" <<EOF
name: rq
run_dir: $tmp/rq
stages:
  slow: {command: doctor, options: {gemm_n: 64, dir: "\${run_dir}"}, slurm: {ntasks: 2}}
  after: {command: doctor, needs: [slow], options: {gemm_n: 64, dir: "\${run_dir}"}}
EOF
t0=$SECONDS
rq=$(ML_BIN=$tmp/fake-mergelens "$submit" "$tmp/rq.yaml" --requeue 2>&1)
R=$(id_of "$rq" slow) R2=$(id_of "$rq" after)
check "requeue job submitted" test -n "$R" -a -n "$R2"
for _ in $(seq 150); do [ -e "$tmp/slow.0" ] && [ -e "$tmp/slow.1" ] && break; sleep 0.2; done
scancel --batch --signal=USR1 "$R"
for _ in $(seq 150); do [ "$(state "$R")" = PENDING ] && break; sleep 0.2; done
check "signalled job is back in the queue" bash -c 'grep -q "JobState=PENDING .*Restarts=1" <<<"$0"' "$(rec "$R")"
# Slurm makes a requeued job eligible only ~2 min later; start it as soon as the
# old step's slurmstepd is gone (its PMIx socket would clash otherwise).
for _ in $(seq 100); do pgrep -f "slurmstepd: \[$R\." >/dev/null || break; sleep 0.2; done
scontrol update JobId="$R" StartTime=now
wait_jobs "$R,$R2"
# the local test Slurm sometimes fails to launch a requeued batch job (it ends
# FAILED without running its script, as in slurm_pipeline): requeue it once more
if [ "$(state "$R")" = FAILED ] && ! grep -q "restart 1" "$tmp/rq/slurm/logs/slow-$R.out" 2>/dev/null; then
  echo "  note: Slurm did not launch requeued job $R; requeueing it again"
  scontrol requeue "$R"
  for _ in $(seq 300); do [ "$(state "$R")" = PENDING ] && break; sleep 0.2; done
  scontrol update JobId="$R" StartTime=now
  wait_jobs "$R,$R2"
fi
echo "  (requeue job finished $((SECONDS - t0)) s after submission)"
log=$(cat "$tmp/rq/slurm/logs/slow-$R.out")
check "batch script forwarded USR1 to srun" has "$log" "got SIGUSR1, forwarding it to srun"
check "every task received USR1" test "$(sort "$tmp/signals" 2>/dev/null | paste -sd, -)" = "task 0 got USR1,task 1 got USR1"
check "batch script requeued the job" has "$log" "interrupted by SIGUSR1, checkpoint written (exit 75); requeueing job $R"
check "second run is restart 1 and completes" bash -c 'grep -qE "restart [12]" <<<"$0" && [ "$(tail -n 1 <<<"$0" | grep -c "exit 0")" = 1 ]' "$log"
check "requeued stage and its dependent COMPLETED" test "$(state "$R")/$(state "$R2")" = "COMPLETED/COMPLETED"
check "slurm/status reports the restart" bash -c '"$0" "$1" | grep -qE "^slow .*COMPLETED .*requeued [12] time"' "$status" "$tmp/rq"

# ---- 4. sbatch refuses: one line naming the stage ----
printf 'stages:\n  a: {command: doctor, slurm: {partition: nosuchpart}}\n' > "$tmp/part.yaml"
o=$("$submit" "$tmp/part.yaml" --out "$tmp/part" 2>&1 >/dev/null); rc=$?
check "sbatch refusal is a one-line error" bash -c '[ $0 -ne 0 ] && [ "$(wc -l <<<"$1")" = 1 ] &&
  grep -q "^slurm/submit: error: sbatch failed for stage .a.: sbatch: error: .*invalid partition" <<<"$1" ||
  { echo "  $1"; exit 1; }' "$rc" "$o"

# ---- 5. a 101-point sweep as a 4-task job array + sweep-combine after it ----
# (fixture of tests/reliability/lib.sh: a SLERP recipe of two tiny trained models)
( . "$src/tests/reliability/lib.sh"; fixture "$tmp/fx" ) || echo "  (fixture failed)"
. "$src/tests/slurm/array_lib.sh"
ml_array_sweep_job "$tmp/asw.yaml" asw "$tmp/asw" "$tmp/fx/rec.yaml" "$tmp/fx/a.h5,$tmp/fx/b.h5"
t0=$SECONDS
asw=$("$submit" "$tmp/asw.yaml" 2>&1)
A=$(id_of "$asw" sweep) C=$(id_of "$asw" combine)
check "array sweep submitted (array 0-3, combine after it)" bash -c '[ -n "$0" ] && [ -n "$1" ] && grep -q "sweep .*array 0-3" <<<"$2"' "$A" "$C" "$asw"
wait_jobs "$A,$C"
echo "  (4-task array sweep and combine finished $((SECONDS - t0)) s after submission)"
check "array tasks and combine COMPLETED" test "$(state "$A")/$(state "$C")" = "COMPLETED/COMPLETED"
check "combine started after every array task ended" bash -c '[ "$(fld StartTime "$(rec "$1")")" \> "$(fld EndTime "$(rec "$0")" | tail -n 1)" ] ||
  [ "$(fld StartTime "$(rec "$1")")" = "$(fld EndTime "$(rec "$0")" | tail -n 1)" ]' "$A" "$C"
for k in 0 1 2 3; do
  check "array task $k ran --task $k --tasks 4 and evaluated its $(( (101 - k + 3) / 4 )) points" \
    grep -q "101 points ($(( (101 - k + 3) / 4 )) in this task" "$tmp/asw/slurm/logs/sweep-${A}_$k.out"
done
(cd "$tmp" && OPENBLAS_NUM_THREADS=1 "$bin" sweep "$tmp/fx/rec.yaml" --param t --from 0 --to 1 --count 101 \
   --domains "$tmp/fx/a.h5,$tmp/fx/b.h5" --eval_windows 8 --out single.h5 > single.log 2>&1)
for d in /loss /accuracy /grid /points; do
  check "Slurm array sweep $d equals the single-process sweep bit for bit" h5diff -q "$tmp/single.h5" "$tmp/asw/sweeps/slerp.h5" "$d" "$d"
done

ctld=$(cat "$ML_SLURM_DIR/slurmctld.pid") sd=$(cat "$ML_SLURM_DIR/slurmd.pid")
"$local" stop 2>/dev/null
check "slurm-local.sh stop ends both daemons" bash -c '! kill -0 "$0" 2>/dev/null && ! kill -0 "$1" 2>/dev/null' "$ctld" "$sd"
echo "slurm cluster: $pass passed, $fail failed, $((SECONDS - t_start)) s"
[ $fail -eq 0 ]
