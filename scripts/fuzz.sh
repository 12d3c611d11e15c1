#!/usr/bin/env bash
# Fuzz the input parsers with libFuzzer (clang, ASan + UBSan + LeakSanitizer):
# YAML/options/job files, corpus readers (text, JSONL), tokenizer
# (encode/decode, tokenizer.json import), safetensors reader.
# Usage: scripts/fuzz.sh [--seconds N] [--build DIR] [--jobs J] [HARNESS...]
#   --seconds N  run each harness N seconds (default 60)
#   --build DIR  build directory (default build-fuzz), configured with clang
#   HARNESS      yaml corpus tokenizer tokenizer_json safetensors (default: all)
# Seeds: tests/fuzz/corpus/<harness>/ (read only); new inputs found go to
# DIR/tests/fuzz/corpus_<harness>/, crash reproducers to DIR/fuzz-artifacts/.
# Prints executions per harness; exits non-zero if any harness finds a bug.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=60; build=$root/build-fuzz; harnesses=()
while [ $# -gt 0 ]; do
  case $1 in
    --seconds) seconds=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) harnesses+=("$1"); shift ;;
  esac
done
[ ${#harnesses[@]} -gt 0 ] || harnesses=(yaml corpus tokenizer tokenizer_json safetensors)
cc=$(command -v clang || command -v clang-14 || true)
[ -n "$cc" ] || { echo "fuzz.sh: clang not found (scripts/install-deps.sh clang llvm)"; exit 2; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
if [ ! -f "$build/CMakeCache.txt" ]; then
  mkdir -p "$build"
  CC=$cc cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DML_FUZZ=ON -DML_SANITIZE=ON \
    -DML_NATIVE=OFF -DCMAKE_C_FLAGS="-fsanitize=fuzzer-no-link" > "$build/configure.log" 2>&1 ||
    { tail -20 "$build/configure.log"; exit 1; }
fi
targets=(); for h in "${harnesses[@]}"; do targets+=(--target "fuzz_$h"); done
cmake --build "$build" -j "$(nproc)" "${targets[@]}" > "$build/fuzz-build.log" 2>&1 ||
  { tail -30 "$build/fuzz-build.log"; exit 1; }
mkdir -p "$build/fuzz-artifacts"
status=0
printf '%-16s %10s %8s %8s %s\n' harness executions exec/s corpus result
for h in "${harnesses[@]}"; do
  out=$build/tests/fuzz/corpus_$h; mkdir -p "$out"
  log=$build/fuzz-$h.log
  rc=0
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "$build/tests/fuzz/fuzz_$h" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$build/fuzz-artifacts/$h-" "$out" "$root/tests/fuzz/corpus/$h" > "$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  n=$(ls "$out" | wc -l)
  if [ $rc -eq 0 ]; then res=ok; else res="FAILED (rc $rc, see $log)"; status=1; fi
  printf '%-16s %10s %8s %8s %s\n' "$h" "${execs:-?}" "${rate:-?}" "$n" "$res"
  [ $rc -eq 0 ] || grep -m5 -E "ERROR|runtime error|fuzz:|SUMMARY" "$log" | sed 's/^/    /' || true
done
exit $status
