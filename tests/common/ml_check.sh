# Shared helpers for shell tests: source it, call `check NAME COMMAND...`,
# end with `ml_check_summary NAME` (prints "NAME: N passed, M failed" and
# returns non-zero on any failure).
pass=0; fail=0
check() { local name=$1; shift; if "$@"; then pass=$((pass+1)); echo "ok   $name"; else fail=$((fail+1)); echo "FAIL $name"; fi; }
# has TEXT NEEDLE: TEXT contains NEEDLE (else show the text)
has() { grep -qF -- "$2" <<<"$1" || { echo "  missing: $2"; echo "$1" | sed 's/^/  | /' | tail -n 40; return 1; }; }
# ml_one_line NAME EXPECTED CMD...: CMD fails with exactly one line of output, containing EXPECTED
ml_one_line() {
  local name=$1 want=$2; shift 2
  local o rc
  o=$("$@" 2>&1); rc=$?
  check "$name" bash -c '[ "$0" -ne 0 ] && [ "$(grep -c . <<<"$1")" -eq 1 ] && grep -qF -- "$2" <<<"$1" ||
    { echo "  rc=$0 output: $1"; exit 1; }' "$rc" "$o" "$want"
}
ml_check_summary() { echo "$1: $pass passed, $fail failed"; [ "$fail" -eq 0 ]; }
# ml_run_tiny_job LABEL JOB: build the 0.3 MB demo corpora in a fresh $tmp/run and run JOB there on
# 2 ranks (log in $tmp/run.log), checking that it succeeds. Needs ML_BIN and ML_SRC; sets tmp, run,
# mpi (the mpiexec command line, an array) and rc.
ml_run_tiny_job() {
  local label=$1 job=$2 t0
  tmp=$(mktemp -d "${ML_TEST_TMP:-/tmp}/$label.XXXXXX"); run=$tmp/run
  mpi=("${ML_MPIEXEC:-mpiexec}" --allow-run-as-root --oversubscribe --bind-to none -n 2)
  if ! ML_BIN=$ML_BIN "$ML_SRC/scripts/make_demo_corpora.sh" "$run/corpora" --mb 0.3 --debs "${ML_TEST_TMP:-/tmp}/debs" > "$tmp/corpora.log" 2>&1; then
    echo "cannot build the demo corpora:"; tail -5 "$tmp/corpora.log"; exit 1
  fi
  t0=$(date +%s)
  "${mpi[@]}" "$ML_BIN" run "$job" --out "$run" > "$tmp/run.log" 2>&1; rc=$?
  check "$label job succeeds on 2 ranks ($(( $(date +%s) - t0 )) s)" test $rc -eq 0
  [ $rc -eq 0 ] || tail -20 "$tmp/run.log"
}
