#!/usr/bin/env bash
# The demo corpora script on a small budget: four domains from Debian
# packages (downloads cached in the build tree), a tokenizer trained on them,
# decode(encode(x)) == x for every demo document, and token stores.
# Usage: test_demo.sh DATA_CLI SCRIPT
set -eu
CLI=$1; SCRIPT=$2
T=${ML_TEST_TMP:-/tmp}/data_demo-$$
CACHE=${ML_TEST_TMP:-/tmp}/debs-cache
rm -rf "$T"
"$SCRIPT" "$T" --mb 0.3 --debs "$CACHE" --bin "$CLI"
for f in english/english.txt stories/stories.txt domains.txt domains.yaml; do [ -s "$T/$f" ] || { echo "FAIL: $f missing"; exit 1; }; done
[ "$(find "$T/python" -name '*.py' | wc -l)" -gt 3 ] || { echo "FAIL: python files"; exit 1; }
[ "$(find "$T/lua" -name '*.nse' | wc -l)" -gt 3 ] || { echo "FAIL: lua files"; exit 1; }
D=$(cat "$T/domains.txt")
"$CLI" tokenizer train --out "$T/tok.h5" --vocab_size 2000 --domains "$D" > "$T/log" 2>&1 || { cat "$T/log"; exit 1; }
# every demo document round-trips (stats fails on a mismatch)
"$CLI" data stats --tokenizer "$T/tok.h5" --domains "$D" | tee "$T/stats"
[ "$(grep -c 'round-trip mismatches 0' "$T/stats")" = 4 ] || { echo "FAIL: round trip"; exit 1; }
"$CLI" tokenize --tokenizer "$T/tok.h5" --out_dir "$T/data" --job "$T/domains.yaml" > "$T/log" 2>&1 || { cat "$T/log"; exit 1; }
for d in english python lua stories; do [ -s "$T/data/$d.h5" ] || { echo "FAIL: $d.h5"; exit 1; }; done
rm -rf "$T"
echo "1 passed, 0 failed"
