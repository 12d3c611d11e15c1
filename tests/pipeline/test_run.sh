#!/usr/bin/env bash
# pipeline: `mergelens run` orders stages by needs, rejects bad job files with
# file:line, and writes experiment.h5 with provenance and per-stage status.
set -u
bin=${ML_BIN:?}; mpiexec=${ML_MPIEXEC:-mpiexec}
tmp=$(mktemp -d "${ML_TEST_TMP:-/tmp}/pipeline.XXXXXX")
. "${ML_SRC:?}/tests/common/ml_check.sh"

cat > "$tmp/job.yaml" <<EOF
name: order
run_dir: $tmp/run
stages:
  second:
    command: doctor
    needs: [first]
    options: {gemm_n: 64, dir: "\${run_dir}"}
  first:
    command: doctor
    options: {gemm_n: 64, dir: "\${job_dir}"}
EOF
out=$("$mpiexec" --allow-run-as-root --oversubscribe -n 2 "$bin" run "$tmp/job.yaml" 2>&1); rc=$?
check "two-stage job on 2 ranks succeeds" test $rc -eq 0
check "stages run in dependency order" bash -c "grep -q 'stage 1/2 first' <<<\"\$0\" && grep -q 'stage 2/2 second' <<<\"\$0\"" "$out"
check "run directory layout" test -d "$tmp/run/models" -a -d "$tmp/run/saes" -a -d "$tmp/run/tracking"
ins=$("$bin" inspect "$tmp/run/experiment.h5" 2>/dev/null)
check "experiment.h5 has format and ranks" bash -c "grep -q '@format = \"mergelens.experiment\"' <<<\"\$0\" && grep -q '@ranks = 2' <<<\"\$0\"" "$ins"
check "experiment.h5 records each stage" bash -c "[ \$(grep -c '@status = \"done\"' <<<\"\$0\") -eq 2 ]" "$ins"
check "experiment.h5 keeps the job file" grep -q '@job_yaml = "name: order' <<<"$ins"
out=$("$bin" run "$tmp/job.yaml" --dry_run 2>&1)
check "dry run prints substituted commands" grep -q "stage second: doctor --gemm_n 64 --dir $tmp/run" <<<"$out"

printf 'stages:\n  a: {command: doctor, needs: [b]}\n  b: {command: doctor, needs: [a]}\n' > "$tmp/cycle.yaml"
out=$("$bin" run "$tmp/cycle.yaml" 2>&1); rc=$?
check "dependency cycle is an error with file:line" bash -c "[ $rc -ne 0 ] && grep -q 'cycle.yaml:2: stage .a. is part of a dependency cycle' <<<\"\$0\"" "$out"
printf 'stages:\n  a:\n    command: trian\n' > "$tmp/cmd.yaml"
out=$("$bin" run "$tmp/cmd.yaml" 2>&1)
check "unknown command names file:line" grep -qF "cmd.yaml:3: stage 'a': unknown command 'trian'" <<<"$out"
printf 'stages:\n  a:\n    command: doctor\n    needs: [zz]\n' > "$tmp/needs.yaml"
out=$("$bin" run "$tmp/needs.yaml" 2>&1)
check "unknown dependency names file:line" grep -qF "needs.yaml:4: stage 'a' needs unknown stage 'zz'" <<<"$out"
printf 'stages:\n  a:\n    command: doctor\n    options: {gemm_n: 64}\n    outptus: [x.h5]\n' > "$tmp/key.yaml"
out=$("$bin" run "$tmp/key.yaml" 2>&1)
check "misspelt stage key names file:line" grep -qF "key.yaml:5: stage 'a': unknown key 'outptus'" <<<"$out"
printf 'stages:\n  a:\n    command: doctor\n    options: {gemm_m: 64}\n' > "$tmp/opt.yaml"
out=$("$bin" run "$tmp/opt.yaml" --out "$tmp/run2" 2>&1); rc=$?
check "misspelt command option is refused at load, with file:line" bash -c "[ $rc -ne 0 ] && grep -qF \"opt.yaml:4: unknown key 'gemm_m' for stage 'a' (mergelens doctor; did you mean 'gemm_n'?)\" <<<\"\$0\"" "$out"
check "nothing ran for the refused job" test ! -e "$tmp/run2"
printf 'stages:\n  a:\n    command: inspect\n    args: [no-such-file.h5]\n' > "$tmp/fail.yaml"
out=$("$bin" run "$tmp/fail.yaml" --out "$tmp/run2" 2>&1); rc=$?
check "a stage failing at run time names the stage" bash -c "[ $rc -ne 0 ] && grep -qF \"stage 'a' (mergelens inspect) failed: \" <<<\"\$0\"" "$out"
check "failed stage recorded in experiment.h5" bash -c "'$bin' inspect '$tmp/run2/experiment.h5' 2>/dev/null | grep -q '@status = \"failed\"'"
rm -rf "$tmp"
echo "pipeline: $pass passed, $fail failed"
[ $fail -eq 0 ]
