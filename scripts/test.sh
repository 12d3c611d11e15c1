#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds, runs every test with
# ctest (unit, MPI with 1/2/4 ranks, CLI, pipeline, reliability, fuzz replays), then the
# tests labelled `sanitize` again under AddressSanitizer + UndefinedBehaviorSanitizer.
# Usage: scripts/test.sh [ctest args...]   (e.g. -R io_ to run a subset)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" "$root/build"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
start=$(date +%s)
status=0
(cd "$root/build" && ctest --output-on-failure -j "$(nproc)" "$@") || status=$?
if [ "${ML_SKIP_SANITIZE:-0}" != 1 ] && [ $# -eq 0 ]; then
  echo "== sanitizer pass (ASan+UBSan): tests labelled sanitize =="
  "$root/scripts/build.sh" "$root/build-asan" -DML_SANITIZE=ON -DML_NATIVE=OFF
  # Open MPI's own allocations are reported as leaks; our tests check leaks
  # themselves through ml_alloc_live().
  (cd "$root/build-asan" && ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
     ctest --output-on-failure -j "$(nproc)" -L sanitize) || status=$?
fi
echo "test suite finished in $(( $(date +%s) - start )) s, status $status"
exit $status
