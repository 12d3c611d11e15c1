#!/usr/bin/env bash
# Configure and build mergelens. Usage: scripts/build.sh [BUILD_DIR] [extra cmake args]
# BUILD_DIR defaults to build/. Example: scripts/build.sh build-asan -DML_SANITIZE=ON
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$root/build}
shift || true
extra=()
[ "${CI:-}" = "true" ] && extra+=(-DML_WERROR=ON)
cmake -S "$root" -B "$dir" -DCMAKE_BUILD_TYPE=Release "${extra[@]}" "$@" >/dev/null
cmake --build "$dir" -j "$(nproc)" 2>&1 | grep -vE '^\[ *[0-9]+%\]|^-- ' || true
test -x "$dir/mergelens" || { echo "error: build failed (see above)" >&2; exit 1; }
