#!/usr/bin/env bash
# CLI behaviour as a user meets it: usage, generated help, job-file errors
# with file:line, and failures on one rank of four ending the whole job.
set -u
bin=${ML_BIN:?}; mpiexec=${ML_MPIEXEC:-mpiexec}
tmp=$(mktemp -d "${ML_TEST_TMP:-/tmp}/cli.XXXXXX")
. "${ML_SRC:?}/tests/common/ml_check.sh"
run() { out=$("$@" 2>&1); rc=$?; }

run "$bin"; check "no command exits 2" test $rc -eq 2
run "$bin" --help; check "--help lists commands" grep -q "doctor" <<<"$out"
run "$bin" frobnicate; check "unknown command exits 2 with message" bash -c "[ $rc -eq 2 ] && grep -q \"unknown command 'frobnicate'\" <<<\"\$0\"" "$out"
run "$bin" doctor --help; check "command help is generated from the registry" grep -q -- "--gemm_n <int>.*\[default: 1024\] \[range 64..8192\]" <<<"$out"

cat > "$tmp/x.yaml" <<'Y'
# lines 1-11 are comments so that the typo sits on line 12
#
#
#
#
#
#
#
#
doctor:
  dir: /tmp
  gemm_m: 256
Y
run "$bin" doctor --config "$tmp/x.yaml"
check "misspelt key names file:line" bash -c "[ $rc -ne 0 ] && grep -qF \"x.yaml:12: unknown key 'gemm_m' (did you mean 'gemm_n'?)\" <<<\"\$0\"" "$out"
run "$bin" doctor --gemm_n 99999
check "out-of-range value is an error" grep -qF "key 'gemm_n': 99999 is out of range [64, 8192]" <<<"$out"
run "$bin" inspect "$tmp/none.h5"
check "inspect of a missing file is a one-line error" bash -c "[ $rc -ne 0 ] && grep -qF \"none.h5: no such file\" <<<\"\$0\"" "$out"

mpi=("$mpiexec" --allow-run-as-root --oversubscribe --bind-to none -n 4)
t0=$(date +%s)
out=$(ML_INJECT_FAIL=doctor:1 timeout 60 "${mpi[@]}" "$bin" doctor --gemm_n 64 --dir "$tmp" 2>&1); rc=$?
t1=$(date +%s)
check "agreed failure on rank 1 of 4: non-zero exit" test $rc -ne 0 -a $rc -ne 124
check "agreed failure on rank 1 of 4: message names rank 1" grep -qF "error: rank 1: failure injected at 'doctor' on rank 1" <<<"$out"
check "agreed failure on rank 1 of 4: ends within 30 s ($((t1-t0)) s)" test $((t1-t0)) -lt 30
check "agreed failure leaves no temporary file" bash -c "! ls '$tmp' | grep -q tmp"
t0=$(date +%s)
out=$(ML_INJECT_FAIL=doctor-alone:1 timeout 60 "${mpi[@]}" "$bin" doctor --gemm_n 64 --dir "$tmp" 2>&1); rc=$?
t1=$(date +%s)
check "lone failure on rank 1 of 4: non-zero exit" test $rc -ne 0 -a $rc -ne 124
check "lone failure on rank 1 of 4: message" grep -qF "[rank 1] error: failure injected at 'doctor-alone' on rank 1" <<<"$out"
check "lone failure on rank 1 of 4: ends within 30 s ($((t1-t0)) s)" test $((t1-t0)) -lt 30
# an error every rank sees without an agreement point (an option out of range):
# one error line, exit 1 on every rank, no MPI_Abort (issue #17 item 5)
out=$(timeout 60 "${mpi[@]}" "$bin" doctor --gemm_n 1 --dir "$tmp" 2>&1); rc=$?
check "error seen by every rank: exit 1 ($rc)" test $rc -eq 1
check "error seen by every rank: one error line" test "$(grep -c 'error:' <<<"$out")" -eq 1
check "error seen by every rank: no MPI_Abort" bash -c "! grep -q MPI_ABORT <<<\"\$0\"" "$out"
out=$(timeout 60 "${mpi[@]}" "$bin" doctor --gemm_n 64 --dir "$tmp" 2>&1); rc=$?
check "doctor on 4 ranks passes and writes collectively" bash -c "[ $rc -eq 0 ] && grep -q 'collective compressed write ok' <<<\"\$0\"" "$out"

rm -rf "$tmp"
echo "cli: $pass passed, $fail failed"
[ $fail -eq 0 ]
