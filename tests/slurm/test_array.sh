#!/usr/bin/env bash
# slurm: `slurm: {array: N}` splits the stage's work (no cluster): every task
# runs `mergelens run --stage NAME --task I --tasks N`, the command gets
# `--task I --tasks N` and ${task}; the combine stage lists every task's part
# ({each_task: ..., of: STAGE}) and runs after the whole array.
set -u
src=${ML_SRC:?}; export ML_BIN=${ML_BIN:?}
bin=$ML_BIN
tmp=$(mktemp -d "${ML_TEST_TMP:-/tmp}/slurm-array.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
. "$src/tests/common/ml_check.sh"
export OMPI_MCA_ess_singleton_isolated=1 OPENBLAS_NUM_THREADS=1
. "$src/tests/slurm/array_lib.sh"
ml_array_sweep_job "$tmp/job.yaml" arr "$tmp/run" "\${run_dir}/recipes/merge.yaml" "\${run_dir}/data/a.h5"
R=$tmp/run
out=$("$bin" run "$tmp/job.yaml" --dry_run 2>&1); rc=$?
check "local dry run: the array stage runs its 4 tasks one after another" bash -c '[ $0 -eq 0 ] &&
  for k in 0 1 2 3; do grep -qxF "stage sweep: sweep $1/recipes/merge.yaml --param t --from 0 --to 1 --count 101 --domains $1/data/a.h5 --eval_windows 8 --out $1/sweeps/parts/slerp.$k.h5 --task $k --tasks 4" <<<"$2" || exit 1; done &&
  [ "$(grep -c "^stage sweep:" <<<"$2")" -eq 4 ]' "$rc" "$R" "$out"
check "the combine step gets every task's part" has "$out" \
  "stage combine: sweep-combine $R/sweeps/parts/slerp.0.h5 $R/sweeps/parts/slerp.1.h5 $R/sweeps/parts/slerp.2.h5 $R/sweeps/parts/slerp.3.h5 --out $R/sweeps/slerp.h5"
out=$("$bin" run "$tmp/job.yaml" --dry_run --stage sweep --task 2 --tasks 4 2>&1); rc=$?
check "one array task: --task 2 --tasks 4 and its own part" bash -c '[ $0 -eq 0 ] && [ "$(grep -c "^stage" <<<"$1")" -eq 1 ] &&
  grep -q -- "--out $2/sweeps/parts/slerp.2.h5 --task 2 --tasks 4$" <<<"$1"' "$rc" "$out" "$R"
ml_one_line "--tasks must equal the array size" "stage 'sweep' is an array of another size, not an array of 3 tasks (--tasks)" \
  "$bin" run "$tmp/job.yaml" --dry_run --stage sweep --task 0 --tasks 3
ml_one_line "--task needs --stage" "run: --task I needs --stage NAME and --tasks N" "$bin" run "$tmp/job.yaml" --dry_run --task 0 --tasks 4
ml_one_line "--task of a stage that is not an array" "stage 'combine' is not a job array" \
  "$bin" run "$tmp/job.yaml" --dry_run --stage combine --task 0 --tasks 4
printf 'stages:\n  d:\n    command: doctor\n    options: {gemm_n: 64}\n    slurm: {array: 3}\n' > "$tmp/dup.yaml"
ml_one_line "an array of a command that cannot split and does not use \${task} is refused" \
  "dup.yaml:5: stage 'd': slurm: array: mergelens doctor has no --task/--tasks and the stage does not use \${task}" \
  "$bin" run "$tmp/dup.yaml" --dry_run
printf 'stages:\n  d:\n    command: doctor\n    options: {gemm_n: 64, dir: "/tmp/t${task}"}\n    slurm: {array: 2}\n' > "$tmp/own.yaml"
out=$("$bin" run "$tmp/own.yaml" --dry_run 2>&1)
check "a command without --task splits by \${task} itself" bash -c 'grep -qx "stage d: doctor --gemm_n 64 --dir /tmp/t0" <<<"$0" &&
  grep -qx "stage d: doctor --gemm_n 64 --dir /tmp/t1" <<<"$0"' "$out"
printf 'stages:\n  s:\n    command: doctor\n    options: {dir: "/tmp/${task}"}\n    slurm: {array: "1,3,5"}\n' > "$tmp/spec.yaml"
ml_one_line "an index list cannot split: give a count" "spec.yaml:5: stage 's': slurm: array '1,3,5': give a task count N or 0-M[%K]" \
  "$bin" run "$tmp/spec.yaml" --dry_run
printf 'stages:\n  c:\n    command: sweep-combine\n    args: [{each_task: "p${task}.h5", of: nope}]\n    options: {out: x.h5}\n' > "$tmp/of.yaml"
ml_one_line "each_task of an unknown stage" "of.yaml:4: each_task: no stage named 'nope'" "$bin" run "$tmp/of.yaml" --dry_run

# ---- slurm/submit: the array job and the combine job after it ----
out=$("$src/slurm/submit" "$tmp/job.yaml" --dry-run 2>&1); rc=$?
check "submit: array of 4 tasks, combine waits for the whole array" bash -c '[ $0 -eq 0 ] &&
  grep -qxF "#SBATCH --array=0-3" "$2/slurm/sweep.sbatch" && grep -qx "ARRAY_TASKS=4" "$2/slurm/sweep.sbatch" &&
  grep -q "combine      sbatch --dependency=afterok:<sweep> " <<<"$1"' "$rc" "$out" "$R"
check "submit: 2 stage(s)" has "$out" "job arr: 2 stage(s)"
sed -i 's/slurm: {array: 4,/slurm: {array: "0-3%2",/' "$tmp/job.yaml"
"$src/slurm/submit" "$tmp/job.yaml" --dry-run --out "$tmp/run2" > /dev/null 2>&1
check "submit: array 0-3%2 is 4 tasks, at most 2 at once" bash -c 'grep -qxF "#SBATCH --array=0-3%2" "$0" && grep -qx "ARRAY_TASKS=4" "$0"' \
  "$tmp/run2/slurm/sweep.sbatch"
# the batch script of array task 2 passes its index and count on to mergelens
mkdir -p "$tmp/fake/bin"
printf '#!/bin/bash\nshift 3\nSLURM_PROCID=0 exec "$@"\n' > "$tmp/fake/bin/srun"
printf '#!/bin/bash\necho "$*" > "%s/fake/args"\n' "$tmp" > "$tmp/fake/mergelens"
chmod +x "$tmp/fake/bin/srun" "$tmp/fake/mergelens"
sed -e "s|^MERGELENS=.*|MERGELENS=$tmp/fake/mergelens|" "$R/slurm/sweep.sbatch" > "$tmp/fake/sweep.sbatch"
(cd "$tmp" && PATH="$tmp/fake/bin:$PATH" SLURM_JOB_ID=5 SLURM_ARRAY_JOB_ID=5 SLURM_ARRAY_TASK_ID=2 SLURM_NTASKS=1 \
   bash "$tmp/fake/sweep.sbatch" > "$tmp/fake/log" 2>&1)
check "array task 2 runs mergelens run --stage sweep --task 2 --tasks 4" bash -c \
  '[ "$(cat "$0")" = "run $1 --out $2 --stage sweep --task 2 --tasks 4" ]' "$tmp/fake/args" "$tmp/job.yaml" "$R"
# ---- the example in docs/modules/slurm.md, as written ----
{ printf 'run_dir: %s/doc\n' "$tmp"
  awk '/^```yaml$/ { inb = 1; blk = ""; next } inb && /^```$/ { if (blk ~ /array: 101/) { printf "%s", blk; exit } inb = 0; next }
       inb { blk = blk $0 "\n" }' "$src/docs/modules/slurm.md"; } > "$tmp/doc.yaml"
out=$("$bin" run "$tmp/doc.yaml" --dry_run 2>&1); rc=$?
check "docs example: 101 array tasks, one point each, and the combine of 101 parts" bash -c '[ $0 -eq 0 ] &&
  [ "$(grep -c "^stage sweep: sweep .* --count 101 .* --task [0-9]* --tasks 101$" <<<"$1")" -eq 101 ] &&
  grep -q -- "--out $2/doc/sweeps/parts/slerp.100.h5 --task 100 --tasks 101$" <<<"$1" &&
  [ "$(grep "^stage combine: sweep-combine" <<<"$1" | grep -o "parts/slerp\.[0-9]*\.h5" | sort -u | wc -l)" -eq 101 ]' "$rc" "$out" "$tmp"
out=$("$src/slurm/submit" "$tmp/doc.yaml" --dry-run 2>&1); rc=$?
check "docs example: submit writes a 101-task array and the combine job after it" bash -c '[ $0 -eq 0 ] &&
  grep -qxF "#SBATCH --array=0-100" "$2/doc/slurm/sweep.sbatch" && grep -qx "ARRAY_TASKS=101" "$2/doc/slurm/sweep.sbatch" &&
  grep -q "combine      sbatch --dependency=afterok:<sweep> " <<<"$1"' "$rc" "$out" "$tmp"
ml_check_summary "slurm array"
