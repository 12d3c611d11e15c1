#!/usr/bin/env bash
# Optional cross-check with the reference Python `safetensors` library:
# what mergelens exports loads there, and what it writes mergelens imports.
# Usage: python_check.sh INTEROP_FIXTURE. Exit 77 (ctest: skipped) when no
# python3 with safetensors, numpy and h5py is available; ML_PYTHON picks one.
set -u
fix=$1
here=$(cd "$(dirname "$0")" && pwd)
py=""
for cand in "${ML_PYTHON:-}" python3 /usr/bin/python3; do
    [ -n "$cand" ] || continue
    if "$cand" -c "import safetensors.numpy, numpy, h5py" 2>/dev/null; then py=$cand; break; fi
done
if [ -z "$py" ]; then
    echo "SKIP: no python3 with safetensors, numpy and h5py importable" \
         "(install with 'pip install safetensors' and python3-h5py, or set ML_PYTHON)"
    exit 77
fi
tmp="${ML_TEST_TMP:-/tmp}/interop_python.$$"
rm -rf "$tmp" && mkdir -p "$tmp" || exit 1
trap 'rm -rf "$tmp"' EXIT
run() { "$fix" "$@" || { echo "FAILED: interop_fixture $*"; exit 1; }; }
run checkpoint "$tmp/m.h5" 11
for dt in f32 f16 bf16; do run export hf "$tmp/m.h5" "$tmp/hf_$dt" --dtype "$dt"; done
run sae "$tmp/topk.h5" topk 16 64 5 3
run export saelens "$tmp/topk.h5" "$tmp/sae"
"$py" "$here/check_export.py" export "$tmp" || exit 1
# the reference library writes an HF directory; mergelens imports it
"$py" "$here/check_export.py" write "$tmp" || exit 1
run import hf "$tmp/py_hf" "$tmp/py.h5"
"$py" "$here/check_export.py" import "$tmp" || exit 1
echo "python cross-check passed ($py, safetensors $("$py" -c 'import safetensors; print(safetensors.__version__)'))"
