#!/usr/bin/env bash
# pipeline: concurrent stage runs (as Slurm stage jobs are) lose no record:
# each stage writes RUN_DIR/records/<stage>.json, and experiment.h5 is
# assembled from all of them by every run that writes it.
set -u
bin=${ML_BIN:?}; src=${ML_SRC:?}
tmp=$(mktemp -d "${ML_TEST_TMP:-/tmp}/pipeline-records.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
. "$src/tests/common/ml_check.sh"
# not OMPI_MCA_ess_singleton_isolated: isolated singletons share one Open MPI
# session directory (jf.0/1), and concurrent ones break each other's
# sharedfp/sm files (Slurm stage jobs each have their own job id)
export OPENBLAS_NUM_THREADS=1
{
  printf 'name: rec\nrun_dir: %s/run\nstages:\n' "$tmp"
  for k in 1 2 3 4 5 6 7; do printf '  s%d: {command: version}\n' "$k"; done
  printf '  after: {command: version, needs: [s1, s2, s3, s4, s5, s6, s7]}\n'
} > "$tmp/job.yaml"
statuses() { "$bin" inspect "$tmp/run/experiment.h5" 2>/dev/null | grep -c '@status = "done"'; }
# three rounds of 7 one-task stage runs started together
for round in 1 2 3; do
  rm -rf "$tmp/run"
  pids=()
  for k in 1 2 3 4 5 6 7; do
    "$bin" run "$tmp/job.yaml" --stage "s$k" > "$tmp/s$k.log" 2>&1 &
    pids+=($!)
  done
  bad=0
  for k in 1 2 3 4 5 6 7; do
    wait "${pids[$((k - 1))]}" || { bad=$((bad + 1)); echo "  s$k:"; sed 's/^/  | /' "$tmp/s$k.log" | tail -n 5; }
  done
  check "round $round: 7 concurrent stage runs succeed" test $bad -eq 0
  check "round $round: 7 stage records" test "$(ls "$tmp/run/records/" | grep -c '^s[1-7]\.json$')" -eq 7
  check "round $round: experiment.h5 has all 7 stages done (none lost)" test "$(statuses)" -eq 7
done
rec=$(cat "$tmp/run/records/s3.json")
check "a record names its stage, command and status" bash -c 'grep -q "\"format\": *\"mergelens.stage_record\"" <<<"$0" &&
  grep -q "\"stage\": *\"s3\"" <<<"$0" && grep -q "\"command\": *\"version\"" <<<"$0" && grep -q "\"status\": *\"done\"" <<<"$0"' "$rec"
leftover=$(ls "$tmp/run/records/" "$tmp/run" | grep '\.tmp\.')
check "no temporary files left" bash -c '[ -z "$0" ] || { echo "  $0"; exit 1; }' "$leftover"
plan=$("$bin" run "$tmp/job.yaml" --plan)
check "--plan reports each record (done for s1..s7, none for after)" bash -c \
  '[ "$(grep -c "^stage	s[1-7]	-	0	done$" <<<"$0")" -eq 7 ] && grep -q "^stage	after	.*	0	-$" <<<"$0"' "$plan"
# the last stage, run alone afterwards, keeps the 7 others
"$bin" run "$tmp/job.yaml" --stage after > /dev/null 2>&1
check "a later stage run keeps the earlier records" test "$(statuses)" -eq 8
# a failing stage is recorded as failed
printf '  bad: {command: inspect, args: [no-such.h5]}\n' >> "$tmp/job.yaml"
"$bin" run "$tmp/job.yaml" --stage bad > /dev/null 2>&1
check "a failed stage has a 'failed' record and the others stay done" bash -c \
  'grep -q "\"status\": *\"failed\"" "$0/run/records/bad.json" && [ "$1" -eq 8 ]' "$tmp" "$(statuses)"
ml_check_summary "pipeline records"
