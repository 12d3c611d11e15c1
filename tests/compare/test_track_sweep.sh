#!/usr/bin/env bash
# `mergelens track-sweep` end to end on the tiny pipeline (jobs/tiny.yaml):
# the stages it needs (tokenizer .. fine-tunes, merge, capture_lua, sae_lua,
# sweep) on 2 ranks, then track-sweep of the Lua fine-tune's SAE along the
# SLERP sweep (t = 0 is the Lua model) on 1, 2 and 4 ranks. Checks: at t = 0
# every live feature has r = 1 and the present fraction is 1; the fraction
# falls towards t = 1; 1/2/4 ranks give identical datasets; r at t = 0.5
# equals an independent numpy computation (SAE encoder + per-feature Pearson)
# on activations captured from `mergelens merge` at t = 0.5; bad inputs.
set -u
bin=${ML_BIN:?}; src=${ML_SRC:?}; mpiexec=${ML_MPIEXEC:-mpiexec}
. "$src/tests/common/ml_check.sh"
tmp=$(mktemp -d "${ML_TEST_TMP:-/tmp}/track_sweep.XXXXXX")
run=$tmp/run
mpi() { "$mpiexec" --allow-run-as-root --oversubscribe --bind-to none -n "$1" "${@:2}"; }

if ! ML_BIN=$bin "$src/scripts/make_demo_corpora.sh" "$run/corpora" --mb 0.3 --debs "${ML_TEST_TMP:-/tmp}/debs" > "$tmp/corpora.log" 2>&1; then
  echo "cannot build the demo corpora:"; tail -5 "$tmp/corpora.log"; exit 1
fi
t0=$(date +%s)
rc=0
for s in tokenizer tokenize base ft_stories ft_lua merge capture_lua sae_lua sweep; do
  mpi 2 "$bin" run "$src/jobs/tiny.yaml" --out "$run" --stage "$s" >> "$tmp/run.log" 2>&1 || { rc=$?; echo "stage $s failed"; break; }
done
t1=$(date +%s)
check "tiny stages up to the sweep succeed on 2 ranks ($((t1-t0)) s)" test $rc -eq 0
[ $rc -eq 0 ] || { tail -20 "$tmp/run.log"; ml_check_summary track_sweep; exit 1; }

ts() { mpi "$1" "$bin" track-sweep "$run/sweeps/slerp.h5" --sae "$3" --acts "$run/acts/lua.h5" --out "$2" "${@:4}"; }
for n in 1 2 4; do
  t0=$(date +%s.%N)
  ts $n "$tmp/sweep_np$n.h5" "$run/saes/lua.h5" > "$tmp/ts$n.log" 2>&1; rc=$?
  t1=$(date +%s.%N)
  check "track-sweep on $n rank(s) succeeds ($(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s)" test $rc -eq 0
  [ $rc -eq 0 ] || tail -5 "$tmp/ts$n.log"
done
grep "present" "$tmp/ts1.log" | sed 's/^.*track-sweep: /  /'
# the job-file stage of jobs/tiny.yaml (the text given in docs/modules/compare.md)
cp "$src/jobs/tiny.yaml" "$tmp/job.yaml"
mpi 2 "$bin" run "$tmp/job.yaml" --out "$run" --stage track_sweep_lua > "$tmp/stage.log" 2>&1; rc=$?
check "the track_sweep_lua job stage runs" test $rc -eq 0 -a -f "$run/tracking/lua_sweep.h5"
[ $rc -eq 0 ] || tail -5 "$tmp/stage.log"
check "the stage's output equals the direct run" h5diff -q "$tmp/sweep_np1.h5" "$run/tracking/lua_sweep.h5" /r /r
mpi 2 "$bin" run "$tmp/job.yaml" --out "$run" --stage track_sweep_lua > "$tmp/stage2.log" 2>&1
check "a rerun skips the complete stage" grep -q "complete, skipped" "$tmp/stage2.log"
for n in 2 4; do
  for d in /grid /r /present /n_present /mean_r /dead /merged_dead /weight_distance; do
    check "np$n $d identical to np1" h5diff -q "$tmp/sweep_np1.h5" "$tmp/sweep_np$n.h5" $d $d
  done
done

# t = 0 is the Lua model itself (SLERP's base_model): r = 1 for every live feature, present fraction 1
line0=$(grep "track-sweep: t = 0 " "$tmp/ts1.log")
check "t = 0: present 100%, mean r 1, weight distance 0" has "$line0" "present 100.0%"
check "t = 0: weight distance 0" has "$line0" "weight distance 0.0000"

py=""
for c in /usr/bin/python3 python3; do "$c" -c "import h5py, numpy" 2>/dev/null && { py=$c; break; }; done
if [ -n "$py" ]; then
  # the merge at t = 0.5 as a file, and its activations on the same windows as capture_lua
  sed 's/t: 0.58/t: 0.5/' "$run/recipes/merge.yaml" > "$tmp/m05.yaml"
  mpi 2 "$bin" merge "$tmp/m05.yaml" --out "$tmp/m05.h5" > "$tmp/m05.log" 2>&1 &&
  mpi 2 "$bin" capture "$tmp/m05.h5" --domains "$run/data/english.h5,$run/data/python.h5,$run/data/lua.h5,$run/data/stories.h5" \
      --tokens 16384 --context 64 --seed 42 --out "$tmp/acts_m05.h5" >> "$tmp/m05.log" 2>&1; rc=$?
  check "merge and capture at t = 0.5" test $rc -eq 0
  [ $rc -eq 0 ] || tail -5 "$tmp/m05.log"
  cat > "$tmp/check.py" <<'EOF'
import sys, h5py, numpy as np
out, sae, own, m05 = sys.argv[1:5]
f = h5py.File(out, "r")
grid, r, present, dead = f["grid"][:], f["r"][:], f["present"][:], f["dead"][:].astype(bool)
live = ~dead
fails = []
def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok: fails.append(what)
check(grid[0] == 0.0 and f["weight_distance"][0] == 0.0, "grid[0] = 0 is the fine-tuned model (weight distance 0)")
check(live.sum() > 0 and np.all(r[0][live] == 1.0), "t = 0: r = 1 exactly for all %d live features" % live.sum())
check(present[0] == 1.0, "t = 0: present fraction 1.0")
check(np.all(np.diff(present) <= 0.02) and present[-1] < 0.5 * present[0],
      "present fraction falls towards t = 1: " + " ".join("%.3f" % p for p in present))
check(np.all(r[:, dead] == 0), "dead features carry r = 0")
s = h5py.File(sae, "r")
W_enc, b_enc, b_dec = s["W_enc"][:].astype(np.float64), s["b_enc"][:].astype(np.float64), s["b_dec"][:].astype(np.float64)
r0, r1 = int(f.attrs["rows_start"]), int(f.attrs["rows_end"])  # the held-out rows track-sweep used
def codes(path):
    x = h5py.File(path, "r")["hooks/blocks.0.mlp.hook_post/acts"][r0:r1].astype(np.float64)
    return np.maximum((x - b_dec) @ W_enc + b_enc, 0.0)
a, b = codes(own), codes(m05)
a_c, b_c = a - a.mean(0), b - b.mean(0)
den = np.sqrt((a_c ** 2).sum(0) * (b_c ** 2).sum(0))
ok = den > 0
ref = np.zeros(a.shape[1]); ref[ok] = (a_c * b_c).sum(0)[ok] / den[ok]
k = int(np.argmin(np.abs(grid - 0.5)))
m = live & ok
err = np.abs(ref[m] - r[k][m]).max()
print("  r at t = 0.5 vs numpy (float64 encoder on captured activations): max |diff| %.2e over %d features" % (err, m.sum()))
check(err < 1e-5, "r at t = 0.5 equals the numpy reference")
check(abs((ref[live] >= f.attrs["tau"]).mean() - present[k]) < 0.01, "present fraction at t = 0.5 equals the reference")
sys.exit(1 if fails else 0)
EOF
  "$py" "$tmp/check.py" "$tmp/sweep_np1.h5" "$run/saes/lua.h5" "$run/acts/lua.h5" "$tmp/acts_m05.h5"; rc=$?
  check "numpy checks" test $rc -eq 0
  # a feature that never fires on its own model (encoder bias -1e3) is flagged dead and left out of the fraction
  cp "$run/saes/lua.h5" "$tmp/sae_dead.h5"
  "$py" -c "import h5py, sys; f = h5py.File(sys.argv[1], 'r+'); f['b_enc'][7] = -1e3" "$tmp/sae_dead.h5"
  ts 2 "$tmp/sweep_dead.h5" "$tmp/sae_dead.h5" --max-tokens 4096 > "$tmp/dead.log" 2>&1; rc=$?
  check "track-sweep with a dead feature succeeds" test $rc -eq 0
  "$py" - "$tmp/sweep_dead.h5" <<'EOF'
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
d, r, p = f["dead"][:], f["r"][:], f["present"][:]
assert d[7] == 1 and d.sum() == 1, d.sum()
assert f.attrs["n_live"] == 511 and f.attrs["n_tokens"] == 4096
assert np.all(r[:, 7] == 0) and p[0] == 1.0 and f["n_present"][0] == 511
print("  dead feature 7: flagged, r = 0, present at t = 0: %d of %d live" % (f["n_present"][0], f.attrs["n_live"]))
EOF
  check "dead feature flagged and excluded from the present fraction" test $? -eq 0
  # held-out rows: whole windows inside the SAE's held-out range; a range without a whole window is refused
  cp "$run/saes/lua.h5" "$tmp/sae_held.h5"
  "$py" -c "import h5py, sys, numpy as np; f = h5py.File(sys.argv[1], 'r+'); f.attrs['heldout_row_start'] = np.int64(4000); f.attrs['heldout_row_end'] = np.int64(16384)" "$tmp/sae_held.h5"
  ts 2 "$tmp/sweep_held.h5" "$tmp/sae_held.h5" --max-tokens 4096 > "$tmp/held.log" 2>&1; rc=$?
  check "track-sweep on held-out rows succeeds" test $rc -eq 0
  "$py" - "$tmp/sweep_held.h5" "$run/acts/lua.h5" <<'EOF'
import sys, h5py
f = h5py.File(sys.argv[1], "r")
T = int(h5py.File(sys.argv[2], "r").attrs["context"])
r0, r1 = int(f.attrs["rows_start"]), int(f.attrs["rows_end"])
assert r0 % T == 0 and 4000 <= r0 < 4000 + T, (r0, T)
assert r1 - r0 == f.attrs["n_tokens"] and f.attrs["n_tokens"] <= 4096 and f.attrs["rows_heldout"] == 1, (r0, r1)
print("  held-out rows [4000, 16384): windows of rows [%d, %d) used (context %d)" % (r0, r1, T))
EOF
  check "held-out rows recorded and inside the range" test $? -eq 0
  "$py" -c "import h5py, sys, numpy as np; f = h5py.File(sys.argv[1], 'r+'); f.attrs['heldout_row_start'] = np.int64(10); f.attrs['heldout_row_end'] = np.int64(20)" "$tmp/sae_held.h5"
  out=$(ts 2 "$tmp/sweep_held2.h5" "$tmp/sae_held.h5" --max-tokens 4096 2>&1); rc=$?
  check "a held-out range without a whole window is refused" bash -c "[ $rc -ne 0 ] && grep -q 'hold no whole window' <<<\"\$0\"" "$out"
else
  echo "skip numpy checks: no python3 with h5py and numpy"
fi

# bad inputs: one line on every rank, no output
out=$(mpi 2 "$bin" track-sweep "$run/sweeps/slerp.h5" --sae "$tmp/nope.h5" --acts "$run/acts/lua.h5" --out "$tmp/bad.h5" 2>&1); rc=$?
check "missing SAE fails naming it" bash -c "[ $rc -ne 0 ] && grep -q 'nope.h5' <<<\"\$0\"" "$out"
out=$(mpi 2 "$bin" track-sweep "$run/acts/lua.h5" --sae "$run/saes/lua.h5" --acts "$run/acts/lua.h5" --out "$tmp/bad.h5" 2>&1); rc=$?
check "an activations file as the sweep fails naming the format" bash -c "[ $rc -ne 0 ] && grep -q 'mergelens.sweep' <<<\"\$0\"" "$out"
check "no output left behind" test ! -e "$tmp/bad.h5"
rm -rf "$tmp"
ml_check_summary track_sweep
