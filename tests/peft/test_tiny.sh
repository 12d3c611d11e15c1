#!/usr/bin/env bash
# The tiny PEFT-portability job end to end on 2 ranks (jobs/peft_tiny.yaml):
# demo corpora -> tokenizer -> stores -> hosts base_a, base_b (another seed),
# ft_lua (base_a fine-tuned) -> LoRA and IA3 adapters on base_a -> port to
# all three hosts (ported / scratch / sampled, 2 seeds, 10 steps). Checks the
# results table's shape and index columns, that porting to the identical host
# reproduces the adapter's own evaluation exactly, that the scratch control
# starts at the bare host, the report section, and that a rerun skips all.
set -u
bin=${ML_BIN:?}; src=${ML_SRC:?}; mpiexec=${ML_MPIEXEC:-mpiexec}
. "$src/tests/common/ml_check.sh"
ml_run_tiny_job peft_tiny "$src/jobs/peft_tiny.yaml"
for f in models/base_a.h5 models/base_b.h5 models/ft_lua.h5 adapters/lora_a.h5 adapters/ia3_a.h5 peft/port.h5 experiment.h5; do
  check "output $f exists" test -f "$run/$f"
done
ins=$("$bin" inspect "$run/peft/port.h5" 2>/dev/null)
# 2 adapters x 3 hosts x 3 conditions x 2 seeds x (zero-shot, after 10 steps) = 72 rows, 1 domain
check "results/loss is [72, 1]" has "$ins" "loss  float64 [72, 1]"
check "results/condition is [72]" has "$ins" "condition  int32 [72]"
check "results/curves is [36, 10]" has "$ins" "curves  float64 [36, 10]"
check "hosts/loss is [3, 1]" has "$ins" "loss  float64 [3, 1]"
check "condition names recorded" has "$ins" '@conditions = "["ported","scratch","sampled"]"'
py=""
for c in /usr/bin/python3 python3; do "$c" -c "import h5py, matplotlib" 2>/dev/null && { py=$c; break; }; done
if [ -n "$py" ]; then
  cat > "$tmp/check.py" <<PY
import h5py, json, numpy as np
f = h5py.File("$run/peft/port.h5", "r")
r = {k: f["results"][k][()] for k in f["results"]}
hosts = json.loads(f.attrs["hosts"]); conds = json.loads(f.attrs["conditions"])
assert len(r["loss"]) == 72 and sorted(set(r["seed"])) == [1, 2] and sorted(set(r["step"])) == [0, 10]
z = r["step"] == 0
own = f["sources/loss"][()]
for a in (0, 1):
    sel = z & (r["adapter"] == a) & (r["target"] == 0) & (r["condition"] == conds.index("ported"))
    assert (r["loss"][sel, 0] == own[a, 0]).all(), ("port to the identical host", r["loss"][sel, 0], own[a, 0])
sel = z & (r["condition"] == conds.index("scratch"))
assert (r["loss"][sel, 0] == f["hosts/loss"][()][r["target"][sel], 0]).all(), "scratch zero-shot = host"
def m(a, t, c, s): return r["loss"][(r["adapter"] == a) & (r["target"] == t) & (r["condition"] == conds.index(c)) & (r["step"] == s), 0].mean()
for a, name in ((0, "lora"), (1, "ia3")):
    print("%s zero-shot stories loss  " % name + "  ".join("%s: ported %.4f scratch %.4f sampled %.4f" % (hosts[t].split("/")[-1], m(a, t, "ported", 0), m(a, t, "scratch", 0), m(a, t, "sampled", 0)) for t in range(3)))
    print("%s after 10 steps          " % name + "  ".join("%s: ported %.4f scratch %.4f sampled %.4f" % (hosts[t].split("/")[-1], m(a, t, "ported", 10), m(a, t, "scratch", 10), m(a, t, "sampled", 10)) for t in range(3)))
# the adapter helps on its own host and on its fine-tune, zero-shot
assert m(0, 0, "ported", 0) < m(0, 0, "scratch", 0) and m(0, 2, "ported", 0) < m(0, 2, "scratch", 0)
print("ok")
PY
  "$py" "$tmp/check.py" > "$tmp/check.log" 2>&1; rc=$?
  cat "$tmp/check.log"
  check "table: exact port to the identical host, scratch = host, ported beats scratch zero-shot" test $rc -eq 0
  "$py" "$src/analysis/report.py" "$run" --strict > "$tmp/report.log" 2>&1; rc=$?
  check "report builds with a PEFT portability table" bash -c "[ $rc -eq 0 ] && grep -q 'PEFT portability: peft/port.h5' '$run/report/index.html'"
else
  echo "skip table and report checks: no python3 with h5py and matplotlib"
fi
"${mpi[@]}" "$bin" run "$src/jobs/peft_tiny.yaml" --out "$run" > "$tmp/rerun.log" 2>&1; rc=$?
check "rerun skips all 8 complete stages" bash -c "[ $rc -eq 0 ] && [ \$(grep -c 'complete, skipped' '$tmp/rerun.log') -eq 8 ]"
rm -rf "$tmp"
ml_check_summary "peft tiny"
