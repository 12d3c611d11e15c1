#!/usr/bin/env bash
# analysis: report.py builds RUN_DIR/report/index.html from a synthetic run directory in the
# documented layouts; every figure it references is a valid, non-blank PNG no wider than the page;
# missing files give notes; a malformed file fails only its section; the tokenizer reader decodes
# token bytes; calibration tables (full, NaN ceilings, absent), the loss heat-map, CE recovered,
# dense-SAE warnings and a persisting pair on the same tokens (recomputed here independently).
set -u
here=$(cd "$(dirname "$0")" && pwd)
src=${ML_SRC:-$(cd "$here/../.." && pwd)}
py=""
for c in ${ML_PYTHON:-} /usr/bin/python3 python3; do
  if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import h5py, numpy, matplotlib' >/dev/null 2>&1; then py=$c; break; fi
done
if [ -z "$py" ]; then
  echo "skip: no python3 with h5py, numpy and matplotlib (Debian: apt-get install python3-h5py python3-matplotlib)"
  exit 77
fi
echo "python: $py"
tmp=$(mktemp -d "${ML_TEST_TMP:-/tmp}/analysis.XXXXXX")
pass=0; fail=0
check() { local name=$1; shift; if "$@"; then pass=$((pass+1)); echo "ok   $name"; else fail=$((fail+1)); echo "FAIL $name"; fi; }
report() { "$py" "$src/analysis/report.py" "$@"; }
checker() { "$py" "$here/check_report.py" "$@"; }

run=$tmp/run
check "synthetic run directory written" "$py" "$here/make_run.py" "$run"
out=$(report "$run" --strict 2>&1); rc=$?
echo "$out"
check "report builds (--strict)" test $rc -eq 0
check "report prints its path" grep -qF "report: $run/report/index.html (14 figures)" <<<"$out"
check "figures valid and not blank, sections, contents" checker "$run/report" --expect-figures 14 --max-width 1150 \
  --expect "base-&gt;lua" --expect "2024-01-01T00:10:00Z" --expect "slerp.h5" --expect "merge.eval.h5" \
  --expect "fine-tune" --expect "persist (" --expect "emerge (" --expect "disappear (" \
  --expect ">été</span>" --expect ">&lt;bos&gt;</span>" --expect "features_lua.html" --expect "12.5" \
  --expect "<td>lua</td><td>1.25</td>" --expect "mergelens.weightspace"
check "eval table: merge row from the eval file (2.4, 0.33)" bash -c "grep -a -q '<td>merge</td><td>merge</td><td>lua</td><td>2.4</td><td>2.6</td><td>0.33</td>' '$run/report/index.html'"
check "eval table: base from the last /train/eval rows (1.8, 2.1, 0.42, 0.37)" bash -c "grep -a -q '<td>base</td><td>base</td><td></td><td>1.8</td><td>2.1</td><td>0.42</td><td>0.37</td>' '$run/report/index.html'"
check "eval table: lua row from eval/lua.h5 with its token counts" bash -c "grep -a -q '<td>lua</td><td>fine-tune</td><td>base</td><td>1.7</td><td>2.9</td><td>0.45</td><td>0.3</td><td>16384</td><td>16384</td>' '$run/report/index.html'"
check "loss heat-map (models x domains) with tokens" grep -a -q "validation loss (nats/token) of every model on every domain; each cell gives the loss and the number of tokens" "$run/report/index.html"
check "sweep figure states the direction of t and the tokens" grep -a -q "(t = 0: lua, t = 1: stories); dashed: base model; tokens per domain and point: lua 16.4k, stories 16.4k" "$run/report/index.html"
check "calibration row base->lua at tau 0.8 (share, ceiling, floor, normalised)" bash -c "grep -a -q '<td>base-&gt;lua</td><td>activation</td><td>0.8</td><td>0.35 \\[0.33, 0.37\\]</td><td class=\"wrap\">0.65 \\[0.64, 0.66\\]</td><td class=\"wrap\">0.05 \\[0.04, 0.06\\]</td><td>0.5 \\[0.45, 0.55\\]</td>' '$run/report/index.html'"
check "calibration: NaN ceiling shown as n/a with its source" grep -a -q '<td>lua-&gt;merge</td><td>activation</td><td>0.8</td><td>0.35 \[0.33, 0.37\]</td><td class="wrap">n/a (no replicas)</td>' "$run/report/index.html"
check "calibration: an edge without the group says no controls computed" grep -a -q '<td>base-&gt;merge</td><td>activation</td><td>0.8</td><td>no controls computed</td>' "$run/report/index.html"
check "CE recovered table per SAE" grep -a -q '<td>lua</td><td>lua</td><td>blocks.0.mlp.hook_post</td><td>2</td><td>4</td><td>2.5</td><td>0.75</td><td>64</td><td>4.1k</td>' "$run/report/index.html"
check "dense SAE warnings (lua: L0 12.5 of 24, 5% dense), none for base" bash -c "grep -a -q 'warning: lua: dense codes: L0 12.5 is above 10% of its 24 latents' '$run/report/index.html' && grep -a -q 'warning: lua: 5% of its latents are dense' '$run/report/index.html' && ! grep -a -q 'warning: base:' '$run/report/index.html'"
check "Stages argv cell wraps" grep -a -q '<td class="wrap">train --out models/base.h5</td>' "$run/report/index.html"
check "persisting pair on the same tokens: child activations equal an independent recomputation" "$py" - "$run" <<'PY'
import re, sys, html
import h5py, numpy as np
run = sys.argv[1]
s = open(run + "/report/index.html", encoding="utf-8").read()
cards = re.findall(r'same tokens: base feature (\d+) .*? and lua feature (\d+) .*?</div>(.*?)</div></div>', s, re.S)
assert cards, "no same-token card"
checked = 0
for pid, cid, body in cards:
    pid, cid = int(pid), int(cid)
    lines = re.findall(r'<div class="ctx">(.*?)</div>', body + "</div>", re.S)  # the card's end took the last one
    with h5py.File(run + "/saes/base.h5") as fp, h5py.File(run + "/saes/lua.h5") as fc, \
            h5py.File(run + "/acts/lua.h5") as a:
        L = int(fp["features"].attrs["ctx_left"])
        rows, toks = fp["features/top_rows"][pid], fp["features/top_tokens"][pid]
        x = a["hooks/blocks.0.mlp.hook_post/acts"][()].view(np.float16).astype(np.float64)
        We, be, bd = fc["W_enc"][()].astype(np.float64), fc["b_enc"][()].astype(np.float64), fc["b_dec"][()]
        k = 0
        for i, r in enumerate(rows):
            if r < 0:
                continue
            child_line = lines[2 * k + 1]
            k += 1
            got = [float(v) for v in re.findall(r'act ([-0-9.e+]+)"', child_line)]
            want = [max(0.0, float((x[r - L + j] - bd) @ We[:, cid] + be[cid])) for j in range(toks.shape[1])
                    if toks[i, j] >= 0]
            assert len(got) == len(want), (len(got), len(want))
            for g, w in zip(got, want):
                assert abs(g - w) <= 6e-3 * abs(w) + 1e-9, (pid, cid, r, g, w)  # titles carry 3 digits
                checked += 1
assert checked > 0
print("  %d same-token child activations match the recomputation" % checked)
PY
# nothing wider than the page: the laid-out width in headless chromium (when installed) at a 1280 px window
chrome=$(command -v chromium || command -v chromium-browser || true)
if [ -n "$chrome" ]; then
  sed 's#</body>#<script>var w = 0; for (const t of document.querySelectorAll("table, img")) w = Math.max(w, t.getBoundingClientRect().right); document.body.setAttribute("data-w", document.documentElement.scrollWidth + " " + Math.round(w));</script></body>#' \
    "$run/report/index.html" > "$run/report/width.html"
  wd=$(timeout 120 "$chrome" --headless --no-sandbox --disable-gpu --window-size=1280,2000 --dump-dom "file://$run/report/width.html" 2>/dev/null | grep -o 'data-w="[0-9]* [0-9]*"' | tr -dc '0-9 ')
  rm -f "$run/report/width.html"
  echo "  laid out in chromium at 1280 px: page scroll width, right edge of the widest table or figure: $wd"
  check "chromium: no table or figure wider than the 1280 px window" bash -c "set -- $wd; [ \$# -eq 2 ] && [ \$1 -le 1280 ] && [ \$2 -le 1280 ]"
else
  echo "skip width check: no chromium (apt-get install chromium)"
fi
check "flow table counts (15 persist, 7 disappear, 2 dead; 17, 5, 2)" bash -c "grep -a -q '<td>15</td><td>7</td><td>2</td><td>17</td><td>5</td><td>2</td><td>68.2%</td><td>31.8%</td><td>22.7%</td>' '$run/report/index.html'"
check "SAE table from /metrics/eval (L0 12.5, FVU 0.3)" bash -c "grep -a -q '<td>12.5</td><td>0.3</td><td>0.05</td>' '$run/report/index.html'"
check "browse page lists the 22 live features" bash -c "[ \$(grep -a -o 'class=\"fh\"' '$run/report/features_base.html' | wc -l) -eq 22 ]"
check "rebuilding removes nothing it needs" bash -c "'$py' '$src/analysis/report.py' '$run' --strict >/dev/null && '$py' '$here/check_report.py' '$run/report' --expect-figures 14 >/dev/null"

# tokenizer reader: every id decodes to its vocabulary bytes, as ml_tokenizer_decode concatenates them
check "tokenizer reader decodes ids to the stored bytes" "$py" - "$run/data/tokenizer.h5" "$here" <<'PY'
import sys
sys.path.insert(0, sys.argv[2]); import make_run
sys.path.insert(0, __import__("os").path.join(sys.argv[2], "..", "..", "analysis")); from mltok import Tokenizer
t = Tokenizer(sys.argv[1])
assert len(t) == len(make_run.VOCAB), len(t)
assert all(t.token_bytes(i) == b for i, b in enumerate(make_run.VOCAB))
assert t.decode([104, 105, 256, 257, 260]) == "hi the catété", t.decode([104, 105, 256, 257, 260])
assert t.decode([0xc3, 0xa9]) == "é"          # one character split over two byte tokens
assert t.special[261] and not t.special[260]
try:
    t.token_bytes(len(t)); sys.exit("out-of-range id accepted")
except ValueError as e:
    assert "outside the vocabulary" in str(e)
PY

# an empty run directory: every section is skipped with a note, no figure
mkdir -p "$tmp/empty"
out=$(report "$tmp/empty" --strict 2>&1); rc=$?
check "empty run directory builds" test $rc -eq 0
check "empty run: no figures, every section present" checker "$tmp/empty/report" --expect-figures 0 \
  --expect "no experiment.h5" --expect "no checkpoint in models/" --expect "no merge sweep" \
  --expect "no tracking file" --expect "no SAE file" --expect "stage not run"

# a malformed file fails its own section only (and --strict makes it fatal)
cp -r "$run" "$tmp/bad"
"$py" -c "import h5py,sys; f=h5py.File(sys.argv[1],'a'); del f['loss']" "$tmp/bad/sweeps/slerp.h5"
out=$(report "$tmp/bad" 2>&1); rc=$?
check "malformed sweep: report still builds" test $rc -eq 0
check "malformed sweep: warning names the section" grep -q "section 'sweeps' failed" <<<"$out"
check "malformed sweep: other figures still there" bash -c "[ \$(grep -a -c '<img' '$tmp/bad/report/index.html') -eq 13 ] && grep -a -q 'section failed' '$tmp/bad/report/index.html'"
report "$tmp/bad" --strict >/dev/null 2>&1; rc=$?
check "malformed sweep: --strict fails" test $rc -ne 0
out=$(report "$tmp/nonexistent" 2>&1); rc=$?
check "missing run directory: one-line error" bash -c "[ $rc -eq 2 ] && grep -q 'nonexistent: not a directory' <<<\"\$0\"" "$out"

# the checker itself rejects a blank figure and a missing one
mkdir -p "$tmp/blank"
"$py" -c "
import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt, sys
fig = plt.figure(figsize=(2, 2)); fig.savefig(sys.argv[1] + '/b.png')
open(sys.argv[1] + '/index.html', 'w').write('<img src=\"b.png\"><img src=\"gone.png\">')" "$tmp/blank"
out=$(checker "$tmp/blank" --sections "" 2>&1); rc=$?
check "checker rejects blank and missing PNGs" bash -c "[ $rc -ne 0 ] && grep -q 'b.png: blank' <<<\"\$0\" && grep -q 'gone.png' <<<\"\$0\"" "$out"

# a real experiment.h5 from `mergelens run` (external links under /outputs) when the binary exists
if [ -n "${ML_BIN:-}" ] && [ -x "${ML_BIN}" ]; then
  printf 'name: rep\nrun_dir: %s\nstages:\n  a:\n    command: doctor\n    options: {gemm_n: 64}\n' "$tmp/real" > "$tmp/real.yaml"
  "$ML_BIN" run "$tmp/real.yaml" >/dev/null 2>&1
  out=$(report "$tmp/real" --strict 2>&1); rc=$?
  check "report from a real mergelens run" bash -c "[ $rc -eq 0 ] && grep -a -q '<td>a</td><td>doctor</td><td>done</td>' '$tmp/real/report/index.html'"
fi

rm -rf "$tmp"
echo "analysis: $pass passed, $fail failed"
[ $fail -eq 0 ]
