#!/usr/bin/env bash
# SAE training throughput from an activations file vs from the model's forward pass
# (`mergelens sae --model`), interleaved, on a run directory with models/base.h5 and
# data/{english,python,lua,stories}.h5 (e.g. the tiny pipeline: jobs/tiny.yaml).
#   bench/sae/forward_vs_file.sh RUN_DIR [RANKS] [REPS]
# Options are the tiny pipeline's sae stage (expansion 4, batch 512, 65536 rows = 4 epochs
# of a 16384-token capture at context 64); evaluation is off so only training is timed.
# Prints each run's rows/s (the command's own "trained ... rows/s" line), the forward
# batches' time, and whether the two routes gave the same W_enc (h5diff).
set -euo pipefail
run=${1:?usage: forward_vs_file.sh RUN_DIR [RANKS] [REPS]}
np=${2:-1}
reps=${3:-3}
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${ML_BIN:-$root/build/mergelens}
mpi="mpiexec --allow-run-as-root --oversubscribe --bind-to none -n $np"
doms=$run/data/english.h5,$run/data/python.h5,$run/data/lua.h5,$run/data/stories.h5
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
opts=(--expansion 4 --l1 3e-4 --lr 1e-3 --batch 512 --tokens 65536 --seed 42 --eval false)
$mpi "$bin" capture "$run/models/base.h5" --domains "$doms" --tokens 16384 --context 64 --seed 42 \
  --out "$tmp/acts.h5" 2>&1 | grep -o 'wrote.*'
rate() { grep -o '([0-9]* rows/s)' | tr -d '()'; }
for r in $(seq "$reps"); do
  f=$($mpi "$bin" sae "$tmp/acts.h5" --out "$tmp/file.h5" "${opts[@]}" 2>&1 | rate)
  out=$($mpi "$bin" sae --model "$run/models/base.h5" --domains "$doms" --model_tokens 16384 --context 64 \
        --out "$tmp/fwd.h5" "${opts[@]}" 2>&1)
  m=$(echo "$out" | rate)
  fb=$(echo "$out" | grep -o 'ran [0-9]* forward batches in [0-9.]* s')
  same=$(h5diff -d 0 "$tmp/file.h5" "$tmp/fwd.h5" /W_enc >/dev/null 2>&1 && echo identical || echo different)
  echo "rep $r, $np rank(s): file $f | forward $m (rank 0 $fb) | W_enc $same"
done
