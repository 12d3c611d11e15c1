#!/usr/bin/env bash
# The README main job: install what is missing, build, and run the demo
# experiment on 2 local MPI ranks. Usage: scripts/demo.sh [RUN_DIR]
# (default runs/demo). Runs every stage that exists in this version.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
run_dir=${1:-$root/runs/demo}
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" "$root/build"
mkdir -p "$run_dir"/{data,models,acts,saes,sweeps,tracking}
ranks=${ML_RANKS:-2}
echo "== environment check ($ranks ranks)"
"$root/scripts/mlrun" -n "$ranks" -- doctor --dir "$run_dir"
if [ -f "$root/jobs/demo.yaml" ] && "$root/build/mergelens" --help | grep -q "^  run "; then
  echo "== jobs/demo.yaml -> $run_dir"
  "$root/scripts/mlrun" -n "$ranks" -- run "$root/jobs/demo.yaml" --out "$run_dir"
fi
echo "run directory: $run_dir"
