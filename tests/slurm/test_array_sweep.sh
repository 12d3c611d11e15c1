#!/usr/bin/env bash
# slurm: a 101-point merge-ratio sweep as a 4-task array stage, run the way
# the array tasks run (`mergelens run JOB --stage sweep --task I --tasks 4`,
# here one after another by `mergelens run JOB`), then sweep-combine as the
# next stage: the losses and accuracies equal the single-process sweep bit
# for bit, and each task evaluated only its own points.
set -u
. "${ML_SRC:?}/tests/common/ml_check.sh"
. "$ML_SRC/tests/reliability/lib.sh"
rel_begin array_sweep
trap '[ "$fail" -eq 0 ] && rm -rf "$T"' EXIT
. "$ML_SRC/tests/slurm/array_lib.sh"
ml_array_sweep_job "$T/job.yaml" arrsweep "$T/run" "$F/rec.yaml" "$F/a.h5,$F/b.h5"
t0=$(date +%s)
ML_LOG_LEVEL=info "$bin" run "$T/job.yaml" > "$T/run.log" 2>&1; rc=$?
check "array sweep (4 tasks) and combine succeed ($(( $(date +%s) - t0 )) s)" test $rc -eq 0; [ $rc -eq 0 ] || tail -5 "$T/run.log"
t0=$(date +%s)
(cd "$T" && "$bin" sweep "$F/rec.yaml" --param t --from 0 --to 1 --count 101 --domains "$F/a.h5,$F/b.h5" --eval_windows 8 \
   --out single.h5) > "$T/single.log" 2>&1
check "single-process 101-point sweep ($(( $(date +%s) - t0 )) s)" test $? -eq 0 || tail -5 "$T/single.log"
for k in 0 1 2 3; do
  want=$(( (101 - k + 3) / 4 ))
  check "task $k evaluated its $want points only" grep -q "101 points ($want in this task" "$T/run.log"
done
for d in $(h5ls -r "$T/single.h5" | awk '$2 == "Dataset" {print $1}' | grep -v '^/profile'); do
  out=$(h5diff "$T/single.h5" "$T/run/sweeps/slerp.h5" "$d" "$d" 2>&1)
  check "combined $d equals the single-process sweep bit for bit" bash -c '[ $0 -eq 0 ] || { echo "  $1" | head -5; exit 1; }' "$?" "$out"
done
check "the stage record aggregates the 4 task records: done" bash -c \
  '"$0" run "$1" --plan | grep -q "^stage	sweep	-	[01]	done$"' "$bin" "$T/job.yaml"
ml_check_summary "slurm array sweep"
