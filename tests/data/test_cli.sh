#!/usr/bin/env bash
# Command-level tests of the data module through its commands (data_cli
# driver): tokenizer train/export/import, tokenize with 1 and 2 ranks giving
# identical files, data stats/stories, and bad input with clear messages and
# no files left behind.
# Usage: test_cli.sh DATA_CLI
set -u
CLI=$1
MPI=${ML_MPIEXEC:-mpiexec}
T=${ML_TEST_TMP:-/tmp}/data_cli-$$
rm -rf "$T"; mkdir -p "$T"
pass=0; fail=0
ok() { pass=$((pass + 1)); }
bad() { echo "FAIL: $*" >&2; fail=$((fail + 1)); }
run() { "$MPI" --allow-run-as-root --oversubscribe --bind-to none -n "$1" "${@:2}"; }
# expect_fail WHAT TEXT CMD...: command fails and stderr names TEXT
expect_fail() {
  local what=$1 text=$2; shift 2
  if "$@" > "$T/out" 2> "$T/err"; then bad "$what: succeeded"; return; fi
  grep -qF -- "$text" "$T/err" && ok || { bad "$what: stderr lacks '$text'"; cat "$T/err" >&2; }
}

export ML_LOG_LEVEL=info
# corpora: synthetic stories, a JSONL export (The Stack style), a source tree
"$CLI" data stories --out "$T/stories.txt" --n 300 --seed 3 > /dev/null && ok || bad "data stories"
[ "$(grep -c '<|endoftext|>' "$T/stories.txt")" = 300 ] && ok || bad "300 stories"
mkdir -p "$T/code/pkg"
for i in 1 2 3 4 5 6; do
  printf 'def f%d(x):\n    """Return x plus %d."""\n    return x + %d\n\n\nclass C%d:\n    pass\n' $i $i $i $i > "$T/code/pkg/m$i.py"
done
: > "$T/code.jsonl"
for i in 1 2 3 4 5; do printf '{"content": "local t%d = {}\\nfor i = 1, %d do t%d[i] = i end\\nreturn t%d\\n", "lang": "Lua"}\n' $i $i $i $i >> "$T/code.jsonl"; done
DOMS="stories=text:$T/stories.txt;python=dir:$T/code:**/*.py;lua=jsonl:$T/code.jsonl:content"

"$CLI" data stats --domains "$DOMS" > "$T/stats" 2>&1 && ok || bad "data stats"
grep -q "python .*files  *6  documents  *6" "$T/stats" && ok || { bad "stats counts"; cat "$T/stats" >&2; }

# tokenizer: 1 and 2 ranks learn the same merges
run 1 "$CLI" tokenizer train --out "$T/tok1.h5" --vocab_size 600 --domains "$DOMS" --export_json "$T/tok1.json" > "$T/log1" 2>&1 && ok || { bad "train np1"; cat "$T/log1" >&2; }
run 2 "$CLI" tokenizer train --out "$T/tok2.h5" --vocab_size 600 --domains "$DOMS" --export_json "$T/tok2.json" > "$T/log2" 2>&1 && ok || { bad "train np2"; cat "$T/log2" >&2; }
cmp -s "$T/tok1.json" "$T/tok2.json" && ok || bad "tokenizer differs between 1 and 2 ranks"
# a seeded sample per domain: also the same for 1 and 2 ranks, and smaller than the full corpus
run 1 "$CLI" tokenizer train --out "$T/s1.h5" --vocab_size 600 --sample_bytes 20000 --domains "$DOMS" --export_json "$T/s1.json" > "$T/log5" 2>&1 && ok || bad "sample np1"
run 2 "$CLI" tokenizer train --out "$T/s2.h5" --vocab_size 600 --sample_bytes 20000 --domains "$DOMS" --export_json "$T/s2.json" > "$T/log6" 2>&1 && ok || bad "sample np2"
cmp -s "$T/s1.json" "$T/s2.json" && ok || bad "sampled tokenizer differs between 1 and 2 ranks"
grep -q "domain stories: 300 documents, .* 0.02 MB sampled" "$T/log6" && ok || { bad "sample size"; cat "$T/log6" >&2; }
# import(export(x)) exports the same json again
"$CLI" tokenizer import --in "$T/tok1.json" --out "$T/tok3.h5" > /dev/null 2>&1 && ok || bad "import"
"$CLI" tokenizer export --in "$T/tok3.h5" --out "$T/tok3.json" > /dev/null 2>&1 && ok || bad "export"
cmp -s "$T/tok1.json" "$T/tok3.json" && ok || bad "export/import round trip"

# tokenize: identical stores with 1 and 2 ranks
run 1 "$CLI" tokenize --tokenizer "$T/tok1.h5" --out_dir "$T/d1" --val_fraction 0.2 "stories=text:$T/stories.txt" \
    "python=dir:$T/code:**/*.py" "lua=jsonl:$T/code.jsonl:content" > "$T/log3" 2>&1 && ok || { bad "tokenize np1"; cat "$T/log3" >&2; }
run 2 "$CLI" tokenize --tokenizer "$T/tok1.h5" --out_dir "$T/d2" --val_fraction 0.2 --domains "$DOMS" > "$T/log4" 2>&1 \
    && ok || { bad "tokenize np2"; cat "$T/log4" >&2; }
for d in stories python lua; do
  for s in /train/tokens /train/doc_offsets /val/tokens /val/doc_offsets; do
    a=$(h5dump -d $s "$T/d1/$d.h5" | tail -n +2 | md5sum); b=$(h5dump -d $s "$T/d2/$d.h5" | tail -n +2 | md5sum)
    [ "$a" = "$b" ] && ok || bad "$d$s differs between 1 and 2 ranks"
  done
done
grep -q "stories: 300 documents (60 val)" "$T/log3" && ok || bad "tokenize report"
h5dump -a format "$T/d1/lua.h5" | grep -q mergelens.tokens && ok || bad "format attribute"

# bad input
expect_fail "missing path" "nowhere.txt" "$CLI" tokenize --tokenizer "$T/tok1.h5" --out_dir "$T/d3" "x=text:$T/nowhere.txt"
printf '{"content": "ok"}\n{"content": 1}\n' > "$T/bad.jsonl"
expect_fail "bad jsonl" "bad.jsonl:2: field 'content' is not a string" \
    "$CLI" tokenize --tokenizer "$T/tok1.h5" --out_dir "$T/d3" "bad=jsonl:$T/bad.jsonl:content"
"$CLI" tokenize --tokenizer "$T/tok1.h5" --out_dir "$T/d3" --skip_bad_lines --val_fraction 0 "bad=jsonl:$T/bad.jsonl:content" \
    > "$T/out" 2>&1 && grep -q "1 skipped lines" "$T/out" && ok || bad "skip_bad_lines"
printf '\n<|endoftext|>\n  \n' > "$T/empty.txt"
expect_fail "empty domain" "domain 'empty' is empty" run 2 "$CLI" tokenize --tokenizer "$T/tok1.h5" --out_dir "$T/d3" "empty=text:$T/empty.txt"
[ ! -e "$T/d3/empty.h5" ] && ! ls "$T/d3" | grep -q tmp && ok || bad "files left behind after a failure"
echo '{"model": {"type": "Unigram", "vocab": []}}' > "$T/uni.json"
expect_fail "unsupported tokenizer" "tokenizer model type 'Unigram' is not supported" "$CLI" tokenizer import --in "$T/uni.json" --out "$T/uni.h5"
expect_fail "no domains" "no domains given" "$CLI" tokenize --tokenizer "$T/tok1.h5" --out_dir "$T/d3"
expect_fail "unknown option" "vocab_sise" "$CLI" tokenizer train --out "$T/x.h5" --vocab_sise 10 "a=text:$T/stories.txt"
expect_fail "vocab too small" "vocab_size" "$CLI" tokenizer train --out "$T/x.h5" --vocab_size 100 "a=text:$T/stories.txt"
"$CLI" tokenize --help > "$T/out" 2>&1 && grep -q -- "--val_fraction" "$T/out" && ok || bad "--help"

rm -rf "$T"
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
