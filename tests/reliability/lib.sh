# Shared by the reliability tests (source it after tests/common/ml_check.sh).
# Gives: $bin, $mpiexec, $T (scratch dir), mpirun_n NP CMD..., fixture DIR
# (a tiny real pipeline through the CLI: stories -> tokenizer -> stores ->
# base model -> fine-tune -> activations -> SAE, plus a SLERP recipe), and
# same_h5 A B (bitwise equal datasets and attributes, timing excluded).
bin=${ML_BIN:?}; mpiexec=${ML_MPIEXEC:-mpiexec}
export ML_LOG_LEVEL=${ML_LOG_LEVEL:-warn} OPENBLAS_NUM_THREADS=1 HDF5_USE_FILE_LOCKING=FALSE
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun_n() { local np=$1; shift; "$mpiexec" --allow-run-as-root --oversubscribe --bind-to none -n "$np" "$@"; }

# Model and stage arguments (small enough that a run lasts about a second).
MODEL_ARGS="--d_model 32 --d_mlp 64 --n_heads 4 --n_kv_heads 2 --context 16 --global_batch 8 --eval_batches 2"

# fixture DIR: build the inputs once into DIR (about 3 s); idempotent.
fixture() {
  local d=$1
  [ -f "$d/.done" ] && return 0
  mkdir -p "$d"
  ( cd "$d" &&
    "$bin" data stories --out st_a.txt --n 400 --seed 3 &&
    "$bin" data stories --out st_b.txt --n 200 --seed 5 &&
    "$bin" tokenizer train --out tok.h5 --vocab_size 300 --domains "a=text:st_a.txt" --export_json tokenizer.json &&
    "$bin" tokenize --tokenizer tok.h5 --out_dir . --domains "a=text:st_a.txt;b=text:st_b.txt" &&
    "$bin" train --domains a.h5 --out base.h5 $MODEL_ARGS --steps 40 --checkpoint_every 10 &&
    "$bin" train --init_from base.h5 --domains b.h5 --out ft.h5 --steps 40 --global_batch 8 --context 16 \
      --eval_batches 2 &&
    "$bin" capture base.h5 --domains a.h5,b.h5 --tokens 8192 --context 16 --out acts.h5 &&
    "$bin" sae acts.h5 --out sae.h5 --expansion 4 --batch 256 --lr 1e-3 --eval_rows 1024 &&
    printf 'models:\n  - model: %s/ft.h5\n  - model: %s/base.h5\nmerge_method: slerp\nbase_model: %s/ft.h5\nparameters:\n  t: 0.5\ndtype: float32\n' \
      "$d" "$d" "$d" > rec.yaml
  ) > "$d/fixture.log" 2>&1 || { echo "fixture failed:"; tail -20 "$d/fixture.log"; return 1; }
  touch "$d/.done"
}

# same_h5 A B: datasets and attributes equal bit for bit, except the timing
# profile (/profile, /train/profile, /train/log/tokens_per_s); prints the differences.
same_h5() {
  local out
  out=$(h5diff -r --exclude-path /profile --exclude-path /train/profile --exclude-path /train/log/tokens_per_s \
        "$1" "$2" 2>&1) && return 0
  echo "  h5diff $1 $2:"
  echo "$out" | grep -B12 "^[1-9][0-9]* differences found" | grep -v "^0 differences" | head -16 | sed 's/^/  | /'
  return 1
}

# attr FILE NAME: a root attribute's value (empty if absent)
attr() { h5dump -a "/$2" "$1" 2>/dev/null | sed -n 's/^ *(0): *//p' | head -1 | tr -d '"'; }

# rel_begin NAME: scratch dir $T, fixture $F built, RANDOM seeded from
# ML_FAULT_SEED (default 12) so that the random moments are reproducible.
rel_begin() {
  T=$(mktemp -d "${ML_TEST_TMP:-/tmp}/$1.XXXXXX")
  F=$T/fixture
  fixture "$F" || exit 1
  RANDOM=${ML_FAULT_SEED:-12}
}
now_ms() { date +%s%3N; }

# ckpt_pos STAGE FILE: the position a checkpoint (complete = 0) was written at:
# train / fine-tune step, sae step, sweep points done, capture batches done
ckpt_pos() {
  case $1 in
    base|finetune|train) h5dump -a /train/step "$2" 2>/dev/null | sed -n 's/^ *(0): *//p' ;;
    sae) h5dump -a /checkpoint/step "$2" 2>/dev/null | sed -n 's/^ *(0): *//p' ;;
    sweep) attr "$2" points_done ;;
    capture) attr "$2" batches_done ;;
  esac
}

# ---- sessions: one launch and every process it started -----------------------
# Open MPI's mpiexec puts each rank in a process group of its own, so a kill of
# mpiexec's group does not reach the ranks. A session is found instead by the
# variable ML_REL_SESSION=<its run directory>, which mpiexec passes on to the
# ranks with the rest of its environment.
# session_start DIR NP CMD...: run `mergelens CMD` in DIR on NP ranks (1: the
# binary alone) in the background, log in DIR/log; sets session_pid (mpiexec's
# or the binary's pid).
session_start() {
  local dir=$1 np=$2; shift 2
  mkdir -p "$dir"
  if [ "$np" = 1 ]; then
    (cd "$dir" && ML_REL_SESSION=$dir exec "$bin" "$@") > "$dir/log" 2>&1 &
  else
    (cd "$dir" && ML_REL_SESSION=$dir exec "$mpiexec" --allow-run-as-root --oversubscribe --bind-to none -n "$np" \
      "$bin" "$@") > "$dir/log" 2>&1 &
  fi
  session_pid=$!
}
# session_pids DIR: the processes of the session that can still run code (a
# zombie's environment is gone, so it is not listed).
session_pids() {
  grep -lsxz -- "ML_REL_SESSION=$1" /proc/[0-9]*/environ 2>/dev/null | sed 's|^/proc/\([0-9]*\)/environ$|\1|'
}
# session_wait_empty DIR MS: wait until no process of the session is left, at
# most MS ms (polling every 10 ms); session_ms = the time waited; fails if some
# process is still there after MS ms.
session_wait_empty() {
  local t0; t0=$(now_ms)
  while [ -n "$(session_pids "$1")" ]; do
    session_ms=$(( $(now_ms) - t0 ))
    [ "$session_ms" -ge "$2" ] && return 1
    sleep 0.01
  done
  session_ms=$(( $(now_ms) - t0 ))
}
# session_kill DIR [PID...]: kill -9 the PIDs (session_pid: the launcher even
# before it exec'd) and every process of the session at once (mpiexec and all
# its ranks, as when the node dies), again until none is left (a rank mpiexec
# was starting at that moment), for at most 10 s; fails if some process is
# still there then.
session_kill() {
  local dir=$1 pids t0; t0=$(now_ms); shift
  [ $# -gt 0 ] && kill -KILL "$@" $(session_pids "$dir") 2>/dev/null
  while pids=$(session_pids "$dir"); [ -n "$pids" ]; do
    [ $(( $(now_ms) - t0 )) -ge 10000 ] && { echo "  cannot kill the processes of $dir: $pids"; return 1; }
    kill -KILL $pids 2>/dev/null
    sleep 0.01
  done
}
# session_clear DIR: before a rerun in DIR: wait (at most 10 s) until the
# session is empty; what is still there then is killed and the call fails (a
# process outlived its job), printing those processes.
session_clear() {
  session_wait_empty "$1" 10000 && return 0
  local pids; pids=$(session_pids "$1")
  echo "  processes of $1 still running after 10 s:"
  [ -n "$pids" ] && ps -o pid,ppid,pgid,stat,cmd -p "$(echo $pids | tr ' ' ,)" | cut -c1-160 | sed 's/^/  | /'
  session_kill "$1"
  return 1
}
