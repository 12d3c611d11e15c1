#!/usr/bin/env bash
# Benchmark runner: machine facts, the sgemm rate under the current settings
# (1 rank x all cores, and one rank per core), then every module benchmark.
# Usage: bench/run.sh [NAME-FILTER]     e.g. bench/run.sh model
# Numbers go to stdout and to bench/results/<date>.txt.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/build.sh" "$root/build" >/dev/null
filter=${1:-}
mkdir -p "$root/bench/results"
log="$root/bench/results/$(date +%Y%m%d-%H%M%S).txt"
cores=$(nproc)
{
echo "== machine"
echo "cpu:        $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
echo "cores:      $cores; avx512f: $(grep -q avx512f /proc/cpuinfo && echo yes || echo no)"
echo "memory:     $(free -g | awk '/Mem:/{print $2}') GiB"
echo "commit:     $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
"$root/scripts/mlrun" -n 1 -- doctor --gemm_n 2048 --dir /tmp 2>&1 | sed "s/^\[ *[0-9.]*\] //" || true
echo "== sgemm, 1 rank x $cores threads"
ML_BIN="$root/build/bench/core/bench_sgemm" "$root/scripts/mlrun" -n 1
echo "== sgemm, $cores ranks x 1 thread"
ML_BIN="$root/build/bench/core/bench_sgemm" "$root/scripts/mlrun" -n "$cores"
for b in "$root"/build/bench/*/bench_*; do
  name=$(basename "$b")
  [ "$name" = bench_sgemm ] && continue
  [ -n "$filter" ] && [[ "$name" != *"$filter"* ]] && continue
  echo "== $name (1 rank x $cores threads)"
  ML_BIN="$b" "$root/scripts/mlrun" -n 1
done
} 2>&1 | tee "$log"
echo "saved: $log"
