#!/usr/bin/env bash
# slurm: slurm/submit without a cluster. Dry runs check the generated sbatch
# options (stage keys over job keys, arrays, dependencies, signal lead,
# requeue) against values written by hand; bad inputs give one-line errors;
# a failing sbatch (fake) cancels what was already submitted.
set -u
src=${ML_SRC:?}; export ML_BIN=${ML_BIN:?}
submit=$src/slurm/submit
tmp=$(mktemp -d "${ML_TEST_TMP:-/tmp}/slurm-plan.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
pass=0; fail=0
check() { local name=$1; shift; if "$@"; then pass=$((pass+1)); echo "ok   $name"; else fail=$((fail+1)); echo "FAIL $name"; fi; }
has() { grep -qF -- "$2" <<<"$1" || { echo "  missing: $2"; echo "$1" | sed 's/^/  | /' | head -n 30; return 1; }; }
hasnt() { ! grep -qF -- "$2" <<<"$1" || { echo "  unexpected: $2"; return 1; }; }

cat > "$tmp/job.yaml" <<EOF
name: plan   # a comment
run_dir: $tmp/run
description: |
  text with: a colon
  - and a dash
slurm: {time: "00:05:00", ntasks: 1, partition: debug, account: "proj1"}
stages:
  prep:
    command: doctor
    options: {gemm_n: 64, dir: "\${run_dir}"}
  sweep:
    command: doctor
    needs: [prep]
    options: {gemm_n: 64, dir: "\${run_dir}/t\${task}"}
    slurm:
      array: 3
      ntasks: 2
      cpus_per_task: 1
      mem: 2G
  combine:
    command: doctor
    needs:
      - sweep
      - prep
    options: {gemm_n: 64, dir: "\${run_dir}"}
    slurm: {time: "00:02:00", exclusive: true}
  long:
    command: doctor
    needs: [prep]
    options: {gemm_n: 64, dir: "\${run_dir}"}
    slurm: {time: "2-00:00", signal: 600}
  mid:
    command: doctor
    options: {gemm_n: 64, dir: "\${run_dir}"}
    slurm: {time: "10"}
EOF
# The same checks for both ways submit reads a job: `mergelens run --plan`
# (when the binary has it) and --dry_run + yaml-flat.awk (ML_SUBMIT_PLAN=yaml).
dry_checks() {
  local m=$1
  export ML_SUBMIT_PLAN=$2
  rm -rf "$tmp/run" "$tmp/run2" "$tmp/run3"
  out=$(cd "$tmp" && "$submit" job.yaml --dry-run 2>&1); rc=$?
  check "dry run succeeds$m" test $rc -eq 0
  check "dry run names the run directory$m" has "$out" "job plan: 5 stage(s), run directory $tmp/run"
  check "first stage has no dependency$m" has "$out" "prep         sbatch $tmp/run/slurm/prep.sbatch"
  check "array stage waits for prep$m" has "$out" "sweep        sbatch --dependency=afterok:<prep> --kill-on-invalid-dep=yes"
  check "block-list needs become one afterok$m" has "$out" "--dependency=afterok:<sweep>:<prep>"
  check "nothing submitted$m" has "$out" "dry run: batch scripts written to $tmp/run/slurm/, nothing submitted"
  check "no job record in a dry run$m" test ! -e "$tmp/run/slurm/jobs.tsv"
  p=$(cat "$tmp/run/slurm/prep.sbatch"); s=$(cat "$tmp/run/slurm/sweep.sbatch"); c=$(cat "$tmp/run/slurm/combine.sbatch")
  check "job-level keys apply$m" bash -c 'for l in "--ntasks=1" "--time=00:05:00" "--partition=debug" "--account=proj1"; do
    grep -qxF -- "#SBATCH $l" <<<"$0" || exit 1; done' "$p"
  check "job name and log file$m" bash -c 'grep -qxF "#SBATCH --job-name=plan.prep" <<<"$0" &&
    grep -qxF "#SBATCH --output='"$tmp"'/run/slurm/logs/prep-%j.out" <<<"$0"' "$p"
  check "stage keys override job keys$m" bash -c 'for l in "--ntasks=2" "--cpus-per-task=1" "--mem=2G" "--time=00:05:00"; do
    grep -qxF -- "#SBATCH $l" <<<"$0" || exit 1; done; ! grep -qxF -- "#SBATCH --ntasks=1" <<<"$0"' "$s"
  check "array: 3 is tasks 0-2 with per-task logs$m" bash -c 'grep -qxF "#SBATCH --array=0-2" <<<"$0" &&
    grep -qxF "#SBATCH --output='"$tmp"'/run/slurm/logs/sweep-%A_%a.out" <<<"$0"' "$s"
  check "signal a quarter of a 5 min limit (75 s)$m" has "$s" "#SBATCH --signal=B:USR1@75"
  check "signal a quarter of a 2 min limit (30 s)$m" has "$c" "#SBATCH --signal=B:USR1@30"
  check "signal 120 s before a 10 min limit$m" grep -qxF "#SBATCH --signal=B:USR1@120" "$tmp/run/slurm/mid.sbatch"
  check "signal key overrides$m" grep -qxF "#SBATCH --signal=B:USR1@600" "$tmp/run/slurm/long.sbatch"
  check "exclusive flag$m" has "$c" "#SBATCH --exclusive"
  check "not requeueable by default$m" bash -c 'grep -qxF "#SBATCH --no-requeue" <<<"$0" && grep -qx "REQUEUE=0" <<<"$0"' "$p"
  check "srun line runs the stage$m" has "$p" 'srun --mpi=pmix --kill-on-bad-exit=1'
  check "script runs this stage$m" bash -c 'grep -qx "STAGE=combine" <<<"$0" && grep -qx "RUN_DIR='"$tmp"'/run" <<<"$0" &&
    grep -qx "JOB_FILE='"$tmp"'/job.yaml" <<<"$0" && grep -qx "MERGELENS='"$ML_BIN"'" <<<"$0"' "$c"
  check "generated scripts parse$m" bash -c 'for f in "$0"/*.sbatch; do bash -n "$f" || exit 1; done' "$tmp/run/slurm"
  check "no placeholders left$m" bash -c '! grep -l "@[A-Z_]*@" "$0"/*.sbatch' "$tmp/run/slurm"
  out=$("$submit" "$tmp/job.yaml" --dry-run --requeue --max-requeue 5 --out "$tmp/run2" 2>&1)
  check "--out moves the run directory$m" test -f "$tmp/run2/slurm/prep.sbatch"
  check "--requeue$m" bash -c 'grep -qxF "#SBATCH --requeue" "$0" && grep -qx "REQUEUE=1" "$0" && grep -qx "MAX_REQUEUE=5" "$0"' "$tmp/run2/slurm/prep.sbatch"
  out=$("$submit" "$tmp/job.yaml" --dry-run --stage sweep --out "$tmp/run3" 2>&1)
  check "--stage submits one stage without dependencies$m" bash -c 'grep -q "1 stage(s)" <<<"$0" &&
    grep -qF "sweep        sbatch $1/run3/slurm/sweep.sbatch" <<<"$0"' "$out" "$tmp"
  unset ML_SUBMIT_PLAN
}
plan_mode=$("$ML_BIN" run --help 2>&1 | grep -q -- "--plan" && echo "--plan" || echo "no --plan in this binary: dry run")
dry_checks " [$plan_mode]" ""
dry_checks " [yaml reader]" yaml

# ---- one-line errors ----
err() { # name expected-text command...
  local name=$1 want=$2; shift 2
  local o rc
  o=$("$@" 2>&1); rc=$?
  check "$name" bash -c '[ "$0" -ne 0 ] && [ "$(wc -l <<<"$1")" -eq 1 ] && grep -qF -- "$2" <<<"$1" ||
    { echo "  rc=$0 output: $1"; exit 1; }' "$rc" "$o" "$want"
}
err "missing job file" "slurm/submit: error: $tmp/nojob.yaml: no such job file" "$submit" "$tmp/nojob.yaml" --dry-run
err "no job file" "slurm/submit: error: expected a job file" "$submit" --dry-run
err "unknown option" "unknown option '--reque'" "$submit" "$tmp/job.yaml" --reque
err "unknown stage" "job.yaml: no stage named 'swep' (stages: prep sweep combine long mid)" "$submit" "$tmp/job.yaml" --dry-run --stage swep
err "missing binary" "/nonexistent/mergelens: mergelens binary is not executable" env ML_BIN=/nonexistent/mergelens "$submit" "$tmp/job.yaml" --dry-run
printf 'stages:\n  a:\n    command: doctor\n    slurm:\n      ntask: 2\n' > "$tmp/key.yaml"
err "unknown slurm key with file:line" "key.yaml:5: stage 'a': slurm: unknown key 'ntask' (known: nodes, ntasks," "$submit" "$tmp/key.yaml" --dry-run --out "$tmp/r"
err "unknown slurm key with file:line [yaml reader]" "key.yaml:5: stage 'a': slurm: unknown key 'ntask'" env ML_SUBMIT_PLAN=yaml "$submit" "$tmp/key.yaml" --dry-run --out "$tmp/r"
printf 'slurm: {time: 1h}\nstages:\n  a: {command: doctor}\n' > "$tmp/time.yaml"
err "bad time with file:line" "time.yaml:1: slurm: 'time' must be like 30, 01:00:00 or 1-12:00:00, got '1h'" "$submit" "$tmp/time.yaml" --dry-run --out "$tmp/r"
printf 'stages:\n  a: {command: doctor, slurm: {array: x}}\n' > "$tmp/arr.yaml"
err "bad array" "arr.yaml:2: stage 'a': slurm: array 'x': give a task count N or 0-M[%K]" "$submit" "$tmp/arr.yaml" --dry-run --out "$tmp/r"
printf 'stages:\n  a:\n    command: doctor\n    needs: [zz]\n' > "$tmp/needs.yaml"
err "unknown dependency (mergelens' own check)" "needs.yaml:4: stage 'a' needs unknown stage 'zz'" "$submit" "$tmp/needs.yaml" --dry-run --out "$tmp/r"
err "sbatch missing" "sbatch not found" env SBATCH=no-such-sbatch "$submit" "$tmp/job.yaml"

# ---- sbatch failure: fake sbatch accepts one job, rejects the next ----
mkdir -p "$tmp/bin"
cat > "$tmp/bin/sbatch" <<EOF
#!/bin/bash
n=\$(cat "$tmp/bin/count" 2>/dev/null || echo 0); echo \$((n + 1)) > "$tmp/bin/count"
[ "\$n" -eq 0 ] && { echo "41;cluster"; exit 0; }
echo "sbatch: error: Batch job submission failed: Invalid partition name specified" >&2; exit 1
EOF
printf '#!/bin/bash\necho "$*" > "%s/bin/scancel.args"\n' "$tmp" > "$tmp/bin/scancel"
chmod +x "$tmp/bin/sbatch" "$tmp/bin/scancel"
o=$(PATH="$tmp/bin:$PATH" "$submit" "$tmp/job.yaml" --out "$tmp/run4" 2>&1); rc=$?
check "sbatch failure is one error line naming the stage" bash -c '[ $0 -ne 0 ] &&
  grep -qxF "slurm/submit: error: sbatch failed for stage '"'sweep'"': sbatch: error: Batch job submission failed: Invalid partition name specified" <<<"$1"' "$rc" "$o"
check "jobs already submitted are cancelled" bash -c 'grep -qx 41 "$0" && grep -qF "cancelled the jobs already submitted: 41" <<<"$1"' "$tmp/bin/scancel.args" "$o"

# ---- YAML reader: flow lists over lines, quoted keys, comments ----
cat > "$tmp/flat.yaml" <<'EOF'
slurm:
  time: "1-00:00:00"   # one day
stages:
  "a b": {command: x, needs: [p,
                              q]}
  c:
    slurm: {gres: "gpu:1", array: "0-7%2"}
EOF
flat=$(awk -f "$src/slurm/yaml-flat.awk" "$tmp/flat.yaml")
want=$(printf '2\tslurm.time\t1-00:00:00\n4\tstages.a b.command\tx\n4\tstages.a b.needs[]\tp\n4\tstages.a b.needs[]\tq\n7\tstages.c.slurm.gres\tgpu:1\n7\tstages.c.slurm.array\t0-7%%2')
check "YAML reader flattens the job-file subset" bash -c '[ "$0" = "$1" ] || { diff <(echo "$0") <(echo "$1"); exit 1; }' "$flat" "$want"

# ---- the batch script launches again when srun started no task ----
# A fake srun that, on its first call, exits 0 without starting anything (as
# srun does when a step is "aborted before step completely launched"), then
# runs its command as task 0; a fake mergelens that records its run.
mkdir -p "$tmp/relaunch/bin" "$tmp/relaunch/run/slurm"
cat > "$tmp/relaunch/bin/srun" <<'EOF2'
#!/bin/bash
n=$(cat "$FAKE_DIR/srun.calls" 2>/dev/null || echo 0); echo $((n + 1)) > "$FAKE_DIR/srun.calls"
[ "$n" = 0 ] && exit 0
shift 3   # --mpi=pmix --kill-on-bad-exit=1 --cpus-per-task=N
SLURM_PROCID=0 exec "$@"
EOF2
printf '#!/bin/bash
echo "$*" >> "$FAKE_DIR/mergelens.runs"
' > "$tmp/relaunch/fake-mergelens"
chmod +x "$tmp/relaunch/bin/srun" "$tmp/relaunch/fake-mergelens"
sed -e "s|@SBATCH_LINES@||; s|@MERGELENS@|$tmp/relaunch/fake-mergelens|; s|@JOB_FILE@|job.yaml|" \
    -e "s|@RUN_DIR@|$tmp/relaunch/run|; s|@STAGE@|s1|; s|@WORKDIR@|$tmp/relaunch|; s|@REQUEUE@|0|; s|@MAX_REQUEUE@|3|; s|@ARRAY_TASKS@||" \
    "$src/slurm/templates/stage.sbatch" > "$tmp/relaunch/s1.sbatch"
out=$(cd "$tmp/relaunch" && FAKE_DIR=$tmp/relaunch PATH="$tmp/relaunch/bin:$PATH" SLURM_JOB_ID=7 SLURM_NTASKS=1 \
      bash s1.sbatch 2>&1); rc=$?
check "a launch that started no task is tried again and the stage runs once (status $rc)" bash -c \
  '[ $0 -eq 0 ] && [ "$(cat "$1/srun.calls")" = 2 ] && [ "$(wc -l < "$1/mergelens.runs")" = 1 ]' "$rc" "$tmp/relaunch"
check "the log says why it launched again" has "$out" "srun started no task (exit 0); launching again in 5 s (attempt 2 of 3)"

# ---- exit 75 (interrupted, checkpoint written) vs failed ----
# The batch script with a fake srun (runs its command as task 0), a fake
# scontrol that records its arguments, and a fake mergelens exiting with a
# given status.
bdir=$tmp/exit75
mkdir -p "$bdir/bin"
printf '#!/bin/bash\nshift 3\nSLURM_PROCID=0 exec "$@"\n' > "$bdir/bin/srun"
printf '#!/bin/bash\necho "$*" >> "%s/scontrol.args"\n' "$bdir" > "$bdir/bin/scontrol"
chmod +x "$bdir/bin/srun" "$bdir/bin/scontrol"
batch() { # REQUEUE EXIT [env...] -> output of the batch script; $brc its status
  local rq=$1 code=$2; shift 2
  rm -rf "$bdir/run" "$bdir/scontrol.args"; mkdir -p "$bdir/run/slurm"
  printf '#!/bin/bash\nenv > "%s/env.txt"\nexit %s\n' "$bdir" "$code" > "$bdir/fake-mergelens"; chmod +x "$bdir/fake-mergelens"
  sed -e "s|@SBATCH_LINES@||; s|@MERGELENS@|$bdir/fake-mergelens|; s|@JOB_FILE@|job.yaml|" \
      -e "s|^CPUINFO=/proc/cpuinfo\$|CPUINFO=${cpuinfo:-/proc/cpuinfo}|" \
      -e "s|@RUN_DIR@|$bdir/run|; s|@STAGE@|s1|; s|@WORKDIR@|$bdir|; s|@REQUEUE@|$rq|; s|@MAX_REQUEUE@|2|; s|@ARRAY_TASKS@|${array_tasks:-}|" \
      "$src/slurm/templates/stage.sbatch" > "$bdir/s1.sbatch"
  bout=$(cd "$bdir" && env PATH="$bdir/bin:$PATH" SLURM_JOB_ID=9 SLURM_NTASKS=1 "$@" bash s1.sbatch 2>&1); brc=$?
}
batch 1 75
check "exit 75 with --requeue: requeued" bash -c '[ "$(cat "$0/scontrol.args")" = "requeue 9" ]' "$bdir"
check "exit 75 with --requeue: the log says interrupted, checkpoint written" has "$bout" \
  "mergelens stage 's1': interrupted, checkpoint written (exit 75); requeueing job 9 (restart 1 of at most 2)"
check "exit 75 with --requeue: the job ends with 75" test "$brc" -eq 75
batch 1 75 SLURM_RESTART_COUNT=2
check "exit 75 after --max-requeue restarts: not requeued" bash -c '[ ! -e "$0/scontrol.args" ] && grep -qF "$1" <<<"$2"' \
  "$bdir" "not requeued: already restarted 2 time(s) (--max-requeue 2); resubmit to resume" "$bout"
batch 0 75
check "exit 75 without --requeue: not requeued, says so" bash -c '[ ! -e "$0/scontrol.args" ] && grep -qF "$1" <<<"$2"' \
  "$bdir" "interrupted, checkpoint written (exit 75); not requeued (submitted without --requeue); resubmit to resume" "$bout"
batch 1 1
check "exit 1 with --requeue: failed, never requeued" bash -c '[ ! -e "$0/scontrol.args" ] && [ "$1" -eq 1 ] &&
  grep -qF "mergelens stage '"'s1'"': failed (exit 1); not requeued" <<<"$2" && ! grep -q interrupted <<<"$2"' "$bdir" "$brc" "$bout"
batch 1 0
check "exit 0: neither interrupted nor failed" bash -c '[ ! -e "$0/scontrol.args" ] && [ "$1" -eq 0 ] &&
  ! grep -qE "interrupted|failed|requeue" <<<"$2"' "$bdir" "$brc" "$bout"

# ---- CPU-specific settings from the login node do not reach the job ----
# the batch script on a node without AVX-512 and on one with it (fake
# /proc/cpuinfo), submitted from a shell that has the login node's settings
printf 'flags\t\t: fpu sse2 avx2\n' > "$bdir/cpuinfo.plain"; printf 'flags\t\t: fpu sse2 avx2 avx512f\n' > "$bdir/cpuinfo.avx512"
cpuinfo=$bdir/cpuinfo.plain batch 0 0 OPENBLAS_CORETYPE=SkylakeX OPENBLAS_L2_SIZE=2097152 OMP_NUM_THREADS=8 SLURM_CPUS_PER_TASK=3
check "login node's OPENBLAS_CORETYPE/L2_SIZE/OMP_NUM_THREADS do not reach mergelens (node without AVX-512)" bash -c \
  '! grep -qE "^(OPENBLAS_CORETYPE|OPENBLAS_L2_SIZE|OMP_NUM_THREADS)=" "$0" && grep -qx "OPENBLAS_NUM_THREADS=3" "$0"' "$bdir/env.txt"
cpuinfo=$bdir/cpuinfo.avx512 batch 0 0 OPENBLAS_CORETYPE=Haswell
check "an AVX-512 node chooses SkylakeX itself" grep -qx "OPENBLAS_CORETYPE=SkylakeX" "$bdir/env.txt"
# slurm/submit adds nothing CPU-specific to the environment sbatch copies
printf '#!/bin/bash\nenv > "%s/bin/sbatch.env"; echo "77;cluster"\n' "$tmp" > "$tmp/bin/sbatch"
chmod +x "$tmp/bin/sbatch"
printf 'stages:\n  a: {command: doctor, options: {gemm_n: 64, dir: /tmp}}\n' > "$tmp/env.yaml"
env -u OPENBLAS_CORETYPE PATH="$tmp/bin:$PATH" "$submit" "$tmp/env.yaml" --out "$tmp/run5" > /dev/null 2>&1
check "slurm/submit exports no OPENBLAS_CORETYPE to sbatch" bash -c '[ -s "$0" ] && ! grep -q "^OPENBLAS_CORETYPE=" "$0"' "$tmp/bin/sbatch.env"

echo "slurm plan: $pass passed, $fail failed"
[ $fail -eq 0 ]
