# Start a private single-node Slurm for one test script (source it after
# setting src; needs PREFIX and PORT arguments):  ml_cluster_start NAME PORT
# Sets tmp (removed at exit), submit, status, local; exits 77 with the reason
# when Slurm cannot run here. The cluster is stopped at exit.
. "$src/tests/common/ml_check.sh"
ml_cluster_start() {
  submit=$src/slurm/submit status=$src/slurm/status local=$src/scripts/slurm-local.sh
  # short paths: slurmd puts unix sockets under the spool directory
  tmp=$(mktemp -d "/tmp/$1.XXXXXX")
  export ML_SLURM_DIR=$tmp/cluster ML_SLURM_PORT=$2
  t_start=$SECONDS
  trap '"$local" stop >/dev/null 2>&1; rm -rf "$tmp"' EXIT
  local out rc
  out=$("$local" start 2>"$tmp/start.err"); rc=$?
  if [ $rc -eq 77 ]; then
    echo "SKIP: cannot run a local Slurm here: $(grep -m1 error "$tmp/start.err" || tail -n 1 "$tmp/start.err")"
    exit 77
  fi
  if [ $rc -ne 0 ]; then cat "$tmp/start.err"; echo "FAIL slurm-local.sh start (exit $rc)"; exit 1; fi
  eval "$out"
}
