#!/usr/bin/env bash
# kill -9 at seeded random moments during a base training, a fine-tune, an SAE
# training, a merge sweep and an activation capture (several trials each, on
# 1 rank; the fine-tune, the SAE and the capture also on 2 ranks, mpiexec and
# every rank killed at once), then, once no process of the run is left, rerun
# the same command. Every stage writes periodic
# checkpoints (checkpoint_every). Checks, per trial:
#  - an output file present after the kill is either a mid-run checkpoint
#    (complete = 0) or equal to the uninterrupted run's: a half written file
#    is never left under the output name (atomic create);
#  - the rerun succeeds (resuming from the last checkpoint) and its output
#    equals the uninterrupted run's bit for bit (h5diff of every dataset and
#    attribute except the timing profile).
# Seed: ML_FAULT_SEED (default 12), trials per stage: ML_FAULT_TRIALS (default 3).
set -u
. "${ML_SRC:?}/tests/common/ml_check.sh"
. "$ML_SRC/tests/reliability/lib.sh"
rel_begin kill_resume
trials=${ML_FAULT_TRIALS:-3}
killed=0; survived=0

declare -A CMD
CMD[base]="train --domains $F/a.h5 --out out.h5 $MODEL_ARGS --steps 100 --checkpoint_every 10 --seed 7"
CMD[finetune]="train --init_from $F/base.h5 --domains $F/b.h5 --out out.h5 --steps 150 --global_batch 8 --context 16 --eval_batches 2 --checkpoint_every 10 --lr 1e-3"
CMD[sae]="sae $F/acts.h5 --out out.h5 --expansion 4 --batch 256 --lr 1e-3 --eval_rows 1024 --tokens 16384 --seed 3 --checkpoint_every 8"
CMD[sweep]="sweep $F/rec.yaml --param t --count 21 --domains $F/a.h5,$F/b.h5 --eval_windows 16 --checkpoint_every 3 --out out.h5"
CMD[capture]="capture $F/base.h5 --domains $F/a.h5,$F/b.h5 --tokens 65536 --context 16 --checkpoint_every 32 --out out.h5"

# run_stage NP DIR CMD...: in DIR, on NP ranks (1: the binary alone)
run_stage() {
  local np=$1 dir=$2; shift 2
  mkdir -p "$dir"
  if [ "$np" = 1 ]; then (cd "$dir" && exec "$bin" "$@"); else (cd "$dir" && mpirun_n "$np" "$bin" "$@"); fi
}

for np in 1 2; do
for stage in base finetune sae sweep capture; do
  [ "$np" = 2 ] && [ "$stage" != finetune ] && [ "$stage" != sae ] && [ "$stage" != capture ] && continue
  cmd=${CMD[$stage]}
  ref=$T/$stage.np$np/ref
  t0=$(now_ms)
  run_stage "$np" "$ref" $cmd > "$T/ref.log" 2>&1 || { check "$stage np$np: uninterrupted run" false; tail -5 "$T/ref.log"; continue; }
  dur=$(( $(now_ms) - t0 ))
  for i in $(seq 1 "$trials"); do
    dir=$T/$stage.np$np/trial$i
    delay=$(( RANDOM % dur ))
    session_start "$dir" "$np" $cmd
    sleep "$(awk -v d="$delay" 'BEGIN { printf "%.3f", d / 1000 }')"
    # mpiexec and every rank at once (each rank is in a process group of its
    # own: the session is found by its directory), until none is left
    session_kill "$dir" "$session_pid"; left=$?
    wait "$session_pid" 2>/dev/null; rc=$?
    what="$stage np$np trial $i (kill at ${delay} of ${dur} ms, rc $rc)"
    check "$what: no process of the killed run is left" test $left -eq 0
    [ $rc -ne 0 ] && killed=$((killed + 1))
    if [ -e "$dir/out.h5" ]; then
      c=$(attr "$dir/out.h5" complete)
      if [ "$c" = 0 ]; then
        pos=$(ckpt_pos "$stage" "$dir/out.h5")
        check "$what: output left is a checkpoint at $pos" test -n "$pos"
      else
        check "$what: output left is complete and equals the uninterrupted run's" same_h5 "$ref/out.h5" "$dir/out.h5"
      fi
    else
      check "$what: no output file (only $(ls "$dir" | grep -c '\.tmp\.') temporary)" true
    fi
    run_stage "$np" "$dir" $cmd > "$dir/log2" 2>&1; rc=$?
    check "$what: rerun succeeds" test $rc -eq 0 || tail -5 "$dir/log2"
    if [ $rc -eq 0 ] && same_h5 "$ref/out.h5" "$dir/out.h5"; then
      survived=$((survived + 1)); check "$what: rerun output bitwise equal" true
    else
      check "$what: rerun output bitwise equal" false
    fi
  done
done
done
echo "kill -9 trials: $killed killed mid-run, $survived reruns bitwise identical"
ml_check_summary kill_resume && rm -rf "$T"
