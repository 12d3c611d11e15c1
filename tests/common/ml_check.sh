# Shared helpers for shell tests: source it, call `check NAME COMMAND...`,
# end with `ml_check_summary NAME` (prints "NAME: N passed, M failed" and
# returns non-zero on any failure).
pass=0; fail=0
check() { local name=$1; shift; if "$@"; then pass=$((pass+1)); echo "ok   $name"; else fail=$((fail+1)); echo "FAIL $name"; fi; }
# has TEXT NEEDLE: TEXT contains NEEDLE (else show the text)
has() { grep -qF -- "$2" <<<"$1" || { echo "  missing: $2"; echo "$1" | sed 's/^/  | /' | tail -n 40; return 1; }; }
ml_check_summary() { echo "$1: $pass passed, $fail failed"; [ "$fail" -eq 0 ]; }
