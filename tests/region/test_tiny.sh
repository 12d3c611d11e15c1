#!/usr/bin/env bash
# jobs/regions_tiny.yaml end to end on 2 ranks: demo corpora -> tokenizer ->
# base -> 2 fine-tunes on each of 3 domains -> `mergelens region` (cosine,
# clustering, interpolation / extrapolation / random combinations, centroid)
# -> centroid experiment (fine-tune from the other domains' centroid vs from
# the base, same budget) -> region/centroid.h5. Checks the planted structure
# (clusters = domains, cosine within > across), that the centroid is an
# ordinary checkpoint (eval reads it), the table, the report section, and
# that a rerun skips every stage.
set -u
bin=${ML_BIN:?}; src=${ML_SRC:?}; mpiexec=${ML_MPIEXEC:-mpiexec}
. "$src/tests/common/ml_check.sh"
ml_run_tiny_job regions_tiny "$src/jobs/regions_tiny.yaml"
for m in stories_1:0 stories_2:1; do check "models/${m%%:*}.h5 trained on subset ${m##*:}/2" has "$("$bin" inspect "$run/models/${m%%:*}.h5" 2>/dev/null)" "@subset_index = ${m##*:}"; done
for f in region/regions.h5 region/centroid.h5 models/centroid.h5 models/centroid_no_lua.h5 models/ftc_lua.h5 experiment.h5; do
  check "output $f exists" test -f "$run/$f"
done
ins=$("$bin" inspect "$run/region/regions.h5" 2>/dev/null)
grep -E "@accuracy|@cos_|@distance_" <<<"$ins"
check "spectral clustering recovers the 3 domains (accuracy 1)" has "$ins" "@accuracy = 1"
cw=$(awk '/@cos_within/ {print $3}' <<<"$ins"); ca=$(awk '/@cos_across/ {print $3}' <<<"$ins")
check "cosine within domains ($cw) > across ($ca)" awk -v a="$cw" -v b="$ca" 'BEGIN { exit !(a > b) }'
check "regions.h5 holds 73 evaluated points" has "$ins" "loss  float64 [73, 3]"
sed -n '/held-out/,/wrote/p' "$tmp/run.log" | head -4
nrow=$(grep -A3 held-out "$tmp/run.log" | grep -c -E '^(stories|lua|python) ')
check "centroid table printed for the 3 held-out domains" test "$nrow" -eq 3
ev=$("$bin" eval "$run/models/centroid.h5" --domains "$run/data/lua.h5" --max_batches 2 2>/dev/null)
check "the centroid is an ordinary checkpoint (eval reads it)" has "$ev" "lua"
py=""
for c in /usr/bin/python3 python3; do "$c" -c "import h5py, matplotlib" 2>/dev/null && { py=$c; break; }; done
if [ -n "$py" ]; then
  "$py" "$src/analysis/report.py" "$run" > "$tmp/report.log" 2>&1; rc=$?
  check "report builds from the regions run" test $rc -eq 0
  [ $rc -eq 0 ] || tail -5 "$tmp/report.log"
  check "report has the region section (heat-map, curves, centroid table)" bash -c "grep -q 'Weight-space regions' '$0' && grep -q 'ordered by spectral cluster' '$0' && grep -q 'centroid experiment' '$0'" "$run/report/index.html"
fi
"${mpi[@]}" "$bin" run "$src/jobs/regions_tiny.yaml" --out "$run" > "$tmp/rerun.log" 2>&1; rc=$?
check "rerun succeeds" test $rc -eq 0
check "rerun skips all 27 complete stages" bash -c "[ \$(grep -c 'complete, skipped' '$tmp/rerun.log') -eq 27 ]"
rm -rf "$tmp"
ml_check_summary "regions_tiny"
