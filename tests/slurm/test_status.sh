#!/usr/bin/env bash
# slurm: slurm/status with a fake scontrol/squeue/sacct (no cluster): a job
# waiting on its dependency is "waiting", not "never ran"; jobs slurmctld has
# forgotten are judged from the run directory (outputs, experiment record);
# long stage names keep the columns aligned.
set -u
src=${ML_SRC:?}; export ML_BIN=${ML_BIN:?}
tmp=$(mktemp -d "${ML_TEST_TMP:-/tmp}/slurm-status.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
. "$src/tests/common/ml_check.sh"
export OMPI_MCA_ess_singleton_isolated=1
status=$src/slurm/status
mkdir -p "$tmp/bin" "$tmp/jobs"
# fake scontrol: `show job -o ID` prints $tmp/jobs/ID if it exists (a forgotten job prints nothing)
cat > "$tmp/bin/scontrol" <<EOF
#!/bin/bash
[ "\$1 \$2 \$3" = "show job -o" ] && [ -f "$tmp/jobs/\$4" ] && cat "$tmp/jobs/\$4"
exit 0
EOF
printf '#!/bin/bash\nexit 1\n' > "$tmp/bin/sacct"     # no accounting
printf '#!/bin/bash\nexit 0\n' > "$tmp/bin/squeue"
chmod +x "$tmp/bin/"*
export PATH=$tmp/bin:$PATH
rec() { # ID STATE REASON [EXITCODE]
  echo "JobId=$1 JobName=x JobState=$2 Reason=$3 Dependency=(null) Restarts=0 ExitCode=${4:-0:0} StdOut=/dev/null" > "$tmp/jobs/$1"
}
cat > "$tmp/job.yaml" <<EOF
name: st
run_dir: $tmp/run
stages:
  prep: {command: doctor, options: {gemm_n: 64, dir: "\${run_dir}"}}
  a_rather_long_stage_name: {command: doctor, needs: [prep], options: {gemm_n: 64, dir: "\${run_dir}"}}
  last: {command: doctor, needs: [a_rather_long_stage_name], options: {gemm_n: 64, dir: "\${run_dir}"}}
EOF
mkdir -p "$tmp/run/slurm"
printf '# stage\tjob_id\tarray\tneeds\t(slurm/submit %s)\nprep\t101\t-\t-\na_rather_long_stage_name\t102\t-\tprep\nlast\t103\t-\ta_rather_long_stage_name\n' \
  "$tmp/job.yaml" > "$tmp/run/slurm/jobs.tsv"

# ---- waiting on a dependency ----
rec 101 RUNNING None; rec 102 PENDING Dependency; rec 103 PENDING Dependency
out=$("$status" "$tmp/run" 2>&1); rc=$?
check "pipeline in progress: exit 2 (still running)" test $rc -eq 2
check "a job waiting on its dependency is waiting, not 'never ran'" bash -c \
  'grep -q "^a_rather_long_stage_name  *102  *PENDING  *waiting for: prep RUNNING (Dependency)$" <<<"$0" && ! grep -q "never ran" <<<"$0"' "$out"
check "the next one waits for the waiting one" has "$out" "waiting for: a_rather_long_stage_name PENDING (Dependency)"
# columns: the state starts at the same offset on every line
cols=$(awk '{ print index($0, $3) }' <<<"$out" | sort -u | wc -l)
check "stage names over 14 characters keep the columns aligned" test "$cols" -eq 1
# a dependency that failed: never ran
rec 101 FAILED NonZeroExitCode 1:0; rec 102 PENDING DependencyNeverSatisfied
out=$("$status" "$tmp/run" 2>&1); rc=$?
check "a failed dependency: never ran, exit 1" bash -c '[ $0 -eq 1 ] &&
  grep -q "^a_rather_long_stage_name .*never ran: prep FAILED (DependencyNeverSatisfied)" <<<"$1"' "$rc" "$out"

# ---- job records gone, no accounting: the run directory decides ----
rm -f "$tmp/jobs/"*
"$ML_BIN" run "$tmp/job.yaml" > "$tmp/run.log" 2>&1
check "the pipeline ran locally" test $? -eq 0
out=$("$status" "$tmp/run" 2>&1); rc=$?
check "forgotten jobs of a completed pipeline: COMPLETED from the record, exit 0" bash -c '[ $0 -eq 0 ] &&
  [ "$(grep -c " COMPLETED .*job record gone from slurmctld (MinJobAge), no accounting; stage record: done" <<<"$1")" -eq 3 ]' "$rc" "$out"
# a stage recorded as failed, another never recorded
# the same job file with 'last' failing at run time (an input that does not exist)
sed -i 's/^  last: {command: doctor, needs: \[a_rather_long_stage_name\], options: .*$/  last: {command: inspect, args: [no-such.h5]}/' "$tmp/job.yaml"
rm -rf "$tmp/run/experiment.h5" "$tmp/run/records"
"$ML_BIN" run "$tmp/job.yaml" --stage last > /dev/null 2>&1
out=$("$status" "$tmp/run" 2>&1); rc=$?
check "forgotten jobs: a recorded failure is FAILED, an unrecorded stage INCOMPLETE, exit 1" bash -c '[ $0 -eq 1 ] &&
  grep -q "^last .* FAILED .*stage record: failed" <<<"$1" && grep -q "^prep .* INCOMPLETE .*outputs incomplete, no stage record" <<<"$1"' "$rc" "$out"
out=$(ML_BIN=/nonexistent "$status" "$tmp/run" 2>&1); rc=$?
check "without a binary: UNKNOWN, says why, exit 1" bash -c '[ $0 -eq 1 ] && grep -q "UNKNOWN .*cannot read the run directory" <<<"$1"' "$rc" "$out"
ml_check_summary "slurm status"
