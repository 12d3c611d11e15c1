#!/usr/bin/env bash
# The README main job: install what is missing, build, make the demo corpora
# from Debian packages, and run jobs/demo.yaml end to end on 2 local MPI ranks
# (about 10 minutes on an idle 2-core machine, 35-50 under heavy load). Usage: scripts/demo.sh [RUN_DIR] [JOB]
# (defaults: runs/demo, jobs/demo.yaml; `scripts/demo.sh runs/tiny jobs/tiny.yaml`
# runs the 1-minute version). Rerunning resumes: finished stages are skipped.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
run_dir=${1:-$root/runs/demo}
job=${2:-$root/jobs/demo.yaml}
ranks=${ML_RANKS:-2}
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" "$root/build"
echo "== environment check ($ranks ranks)"
mkdir -p "$run_dir"
"$root/scripts/mlrun" -n "$ranks" -- doctor --dir "$run_dir"
if [ ! -f "$run_dir/corpora/domains.txt" ]; then
  mb=4
  case "$job" in *tiny*) mb=0.3 ;; esac
  echo "== demo corpora ($mb MB per domain) -> $run_dir/corpora"
  ML_BIN="$root/build/mergelens" "$root/scripts/make_demo_corpora.sh" "$run_dir/corpora" --mb "$mb"
fi
echo "== $job -> $run_dir"
"$root/scripts/mlrun" -n "$ranks" -- run "$job" --out "$run_dir"
if [ -f "$root/analysis/report.py" ]; then
  py=""
  for c in /usr/bin/python3 python3; do "$c" -c "import h5py, matplotlib" 2>/dev/null && { py=$c; break; }; done
  if [ -n "$py" ]; then
    "$py" "$root/analysis/report.py" "$run_dir" && echo "report: $run_dir/report/index.html"
  fi
fi
echo "run directory: $run_dir (open $run_dir/experiment.h5 in h5py, or: build/mergelens inspect $run_dir/experiment.h5)"
