#!/usr/bin/env bash
# The launcher dies: kill -9 of mpiexec alone (not its ranks, which Open MPI
# puts in process groups of their own) at a seeded random moment during a
# long fine-tune and a long SAE training on 2 ranks. Checks, per trial:
#  - every rank is gone within 1 s of the kill (they die with their parent,
#    ml_signal_die_with_parent; without it they lived on for 1-2.5 s and kept
#    renaming checkpoints over the output);
#  - the output left is absent or an intact checkpoint (complete = 0, with its
#    position), and the rerun resumes it to a file bitwise equal to the
#    uninterrupted 2-rank run's.
# And a run started without a launcher is not tied to its parent: a 1-rank
# run whose parent shell exits at once (as under nohup or `&` and logout)
# finishes its output.
# Seed: ML_FAULT_SEED (default 12), trials per stage: ML_FAULT_TRIALS (default 2).
set -u
. "${ML_SRC:?}/tests/common/ml_check.sh"
. "$ML_SRC/tests/reliability/lib.sh"
rel_begin launcher_death
trials=${ML_FAULT_TRIALS:-2}
declare -A CMD
CMD[finetune]="train --init_from $F/base.h5 --domains $F/b.h5 --out out.h5 --steps 200 --global_batch 8 --context 16 --eval_batches 2 --checkpoint_every 10 --lr 1e-3"
CMD[sae]="sae $F/acts.h5 --out out.h5 --expansion 4 --batch 256 --lr 1e-3 --eval_rows 1024 --tokens 65536 --seed 3 --checkpoint_every 16"

for stage in finetune sae; do
  cmd=${CMD[$stage]}
  ref=$T/$stage/ref; mkdir -p "$ref"
  (cd "$ref" && mpirun_n 2 "$bin" $cmd) > "$ref/log" 2>&1 || { check "$stage: uninterrupted run" false; tail -5 "$ref/log"; continue; }
  for i in $(seq 1 "$trials"); do
    dir=$T/$stage/trial$i
    session_start "$dir" 2 $cmd
    # a moment after the first periodic checkpoint (bounded: 120 s)
    t0=$(now_ms)
    while [ ! -e "$dir/out.h5" ] && kill -0 "$session_pid" 2>/dev/null && [ $(( $(now_ms) - t0 )) -lt 120000 ]; do
      sleep 0.02
    done
    sleep "0.$(printf '%03d' $((RANDOM % 500)))"
    ranks=$(session_pids "$dir" | grep -vx "$session_pid" | tr '\n' ' ')
    nranks=$(wc -w <<<"$ranks")
    if [ "$nranks" -ne 2 ]; then
      check "$stage trial $i: 2 ranks running before the kill (found: $ranks)" false
      session_kill "$dir" "$session_pid"; wait "$session_pid" 2>/dev/null; continue
    fi
    echo "note: $stage trial $i: the ranks and their parent (mpiexec, pid $session_pid):"
    ps -o pid,ppid,pgid,cmd -p "$(echo $session_pid $ranks | tr ' ' ,)" | cut -c1-110 | sed 's/^/  | /'
    kill -KILL "$session_pid"
    session_wait_empty "$dir" 1000; gone=$?
    wait "$session_pid" 2>/dev/null
    check "$stage trial $i: every rank is gone within 1 s of kill -9 of mpiexec (${session_ms} ms)" test $gone -eq 0
    session_clear "$dir" # (if they were not)
    if [ -e "$dir/out.h5" ]; then
      c=$(attr "$dir/out.h5" complete) pos=$(ckpt_pos "$stage" "$dir/out.h5")
      if [ "$c" = 1 ]; then
        check "$stage trial $i: the run had finished: its output equals the uninterrupted run's" \
          same_h5 "$ref/out.h5" "$dir/out.h5"
      else
        check "$stage trial $i: the output left is an intact checkpoint (complete = '$c', step '$pos')" \
          test "$c" = 0 -a -n "$pos"
        check "$stage trial $i: the checkpoint opens (inspect)" eval "'$bin' inspect '$dir/out.h5' > /dev/null"
      fi
    else
      check "$stage trial $i: no output left (killed before the first checkpoint)" true
    fi
    (cd "$dir" && mpirun_n 2 "$bin" $cmd) > "$dir/log2" 2>&1; rc=$?
    check "$stage trial $i: the rerun succeeds" test $rc -eq 0 || tail -5 "$dir/log2"
    check "$stage trial $i: the rerun's output is bitwise equal to the uninterrupted run's" \
      same_h5 "$ref/out.h5" "$dir/out.h5"
  done
done

# no launcher: the parent shell exits at once, the run goes on and finishes
dir=$T/nohup; mkdir -p "$dir"
(cd "$dir" && ML_REL_SESSION=$dir bash -c "'$bin' train --domains $F/a.h5 --out out.h5 $MODEL_ARGS --steps 40 > log 2>&1 &")
session_wait_empty "$dir" 120000; rc=$?
check "a 1-rank run whose parent exited at once ends (${session_ms} ms)" test $rc -eq 0
session_clear "$dir"
check "a 1-rank run whose parent exited at once finishes its output (complete = '$(attr "$dir/out.h5" complete)')" \
  test "$(attr "$dir/out.h5" complete)" = 1
ml_check_summary launcher_death && rm -rf "$T"
