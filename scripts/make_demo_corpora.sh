#!/usr/bin/env bash
# Build the four demo domains of mergelens from Debian packages (no network
# beyond the Debian archive):
#   english  fortunes (fortune cookies) + WordNet glosses (wordnet-base)
#   python   the Python 3.11 standard library (tests left out)
#   lua      Nmap's NSE scripts and libraries (nmap-common; nselib/data left out)
#   stories  SYNTHETIC simple children's stories from `mergelens data stories`
#            (a seeded generator; Debian has no TinyStories-like text)
# Usage: scripts/make_demo_corpora.sh OUTDIR [--mb N] [--seed S] [--bin MERGELENS]
#   --mb N    about N MB of text per domain (default 4)
#   --bin B   the mergelens executable (default: $ML_BIN, else `mergelens` on PATH,
#             else build/mergelens next to this script)
#   --debs D  keep downloaded .deb packages in D (default OUTDIR/.debs)
# Writes OUTDIR/{english/english.txt, python/, lua/, stories/stories.txt},
# OUTDIR/domains.txt (the compact NAME=KIND:PATH spec for `mergelens tokenize`)
# and OUTDIR/domains.yaml (the same as a job-file `domains:` mapping).
# Needs dpkg-deb and apt-get (Debian/Ubuntu); as root it runs `apt-get update`
# when the package lists are missing.
set -euo pipefail
export LC_ALL=C

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
[ $# -ge 1 ] || usage
case "$1" in -h|--help) usage 0 ;; esac
OUT=$1; shift
MB=4; SEED=42; BIN=${ML_BIN:-}; DEBS=
while [ $# -gt 0 ]; do
  case "$1" in
    --mb) MB=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    --debs) DEBS=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "make_demo_corpora: unknown option '$1'" >&2; usage ;;
  esac
done
case "$MB" in ''|*[!0-9.]*) echo "make_demo_corpora: --mb wants a number, got '$MB'" >&2; exit 2 ;; esac
if [ -z "$BIN" ]; then
  if command -v mergelens >/dev/null 2>&1; then BIN=$(command -v mergelens)
  else BIN="$(cd "$(dirname "$0")/.." && pwd)/build/mergelens"; fi
fi
[ -x "$BIN" ] || { echo "make_demo_corpora: mergelens executable '$BIN' not found (use --bin or ML_BIN)" >&2; exit 1; }
BUDGET=$(awk -v m="$MB" 'BEGIN { printf "%d", m * 1000000 }')

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=${DEBS:-$OUT/.debs}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
log() { echo "[make_demo_corpora] $*"; }

# Extract Debian packages into $WORK/root (downloaded once, kept for reruns).
fetch() {
  local missing=()
  for p in "$@"; do ls "$WORK"/"${p}"_*.deb >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    log "downloading ${missing[*]}"
    if ! (cd "$WORK" && apt-get download "${missing[@]}" >/dev/null 2>&1); then
      if [ "$(id -u)" = 0 ]; then apt-get update -qq >/dev/null; fi
      (cd "$WORK" && apt-get download "${missing[@]}" >/dev/null) || {
        echo "make_demo_corpora: cannot download ${missing[*]} (apt-get download failed)" >&2; exit 1; }
    fi
  fi
  for p in "$@"; do dpkg-deb -x "$(ls "$WORK"/"${p}"_*.deb | head -1)" "$WORK/root"; done
}

# A fixed pseudo-random order of the lines of stdin (a hash of each line):
# a budget then samples the whole tree instead of its first directories.
shuffle() {
  awk 'BEGIN { for (i = 1; i < 256; i++) ord[sprintf("%c", i)] = i }
       { h = 7; for (i = 1; i <= length($0); i++) h = (h * 31 + ord[substr($0, i, 1)]) % 1000003
         printf "%07d %s\n", h, $0 }' | sort | cut -d' ' -f2-
}

# Copy files (relative paths from stdin) from $1 to $2 while they fit in $BUDGET bytes.
copy_budget() {
  local src=$1 dst=$2 used=0 n=0 f size
  rm -rf "$dst"; mkdir -p "$dst"
  while IFS= read -r f; do
    size=$(stat -c %s "$src/$f")
    [ "$size" -gt 0 ] || continue
    [ $((used + size)) -le "$BUDGET" ] || continue
    mkdir -p "$dst/$(dirname "$f")"
    cp "$src/$f" "$dst/$f"
    used=$((used + size)); n=$((n + 1))
  done
  log "$(basename "$dst"): $n files, $used bytes"
}

# ---- english: fortunes + WordNet glosses ---------------------------------------
fetch fortunes wordnet-base
R="$WORK/root"
mkdir -p "$OUT/english"
E="$OUT/english/english.txt"
HALF=$((BUDGET / 2))
{
  # one fortune per document (files are "%"-separated; .dat/.u8 are indexes)
  for f in $(ls "$R/usr/share/games/fortunes" | grep -v '\.\(dat\|u8\)$'); do
    [ -f "$R/usr/share/games/fortunes/$f" ] && [ ! -L "$R/usr/share/games/fortunes/$f" ] || continue
    awk '/^%$/ { if (doc != "") print doc "\n<|endoftext|>"; doc = ""; next }
         { doc = doc (doc == "" ? "" : "\n") $0 }
         END { if (doc != "") print doc "\n<|endoftext|>" }' "$R/usr/share/games/fortunes/$f"
  done | head -c "$HALF" || true # head closes the pipe early (SIGPIPE upstream)
  # WordNet: "lemma: gloss" lines, 12 synsets per document
  for pos in noun verb adj adv; do
    awk -v pos="$pos" '/^  / { next }
         { split($0, a, " \\| "); if (a[2] == "") next; w = $5; gsub(/_/, " ", w); gsub(/\([a-z]+\)$/, "", w)
           sub(/[ \t]+$/, "", a[2]); doc = doc w " (" pos "): " a[2] "\n"; n++
           if (n % 12 == 0) { print doc "<|endoftext|>"; doc = "" } }
         END { if (doc != "") print doc "<|endoftext|>" }' "$R/usr/share/wordnet/data.$pos"
  done | head -c $((BUDGET - HALF)) || true
} > "$E.tmp"
[ -s "$E.tmp" ] || { echo "make_demo_corpora: no English text extracted" >&2; exit 1; }
mv "$E.tmp" "$E"
log "english: $(stat -c %s "$E") bytes"

# ---- python: the standard library without its tests -----------------------------
PY=/usr/lib/python3.11
if [ ! -d "$PY" ] || [ ! -f "$PY/os.py" ]; then
  fetch libpython3.11-stdlib
  PY="$WORK/root/usr/lib/python3.11"
fi
(cd "$PY" && find . -name '*.py' -type f \
   -not -path '*/test/*' -not -path '*/tests/*' -not -path '*/idle_test/*' \
   -not -path './site-packages/*' -not -path './dist-packages/*' -not -name 'test_*.py' \
   | sed 's|^\./||' | shuffle) | copy_budget "$PY" "$OUT/python"

# ---- lua: Nmap scripting engine ----------------------------------------------------
fetch nmap-common
NM="$WORK/root/usr/share/nmap"
(cd "$NM" && find scripts nselib -type f \( -name '*.nse' -o -name '*.lua' \) -not -path 'nselib/data/*' | shuffle) \
  | copy_budget "$NM" "$OUT/lua"

# ---- stories: synthetic ----------------------------------------------------------
mkdir -p "$OUT/stories"
N=$((BUDGET / 400 + 1)) # a story is about 400 bytes
"$BIN" data stories --out "$OUT/stories/stories.txt" --n "$N" --seed "$SEED" >/dev/null
log "stories: $(stat -c %s "$OUT/stories/stories.txt") bytes ($N synthetic stories, seed $SEED)"

# ---- domain specs -----------------------------------------------------------------
cat > "$OUT/domains.txt" <<EOF
english=text:$OUT/english/english.txt;python=dir:$OUT/python:**/*.py;lua=dir:$OUT/lua:**/*.nse,**/*.lua;stories=text:$OUT/stories/stories.txt
EOF
cat > "$OUT/domains.yaml" <<EOF
domains:
  english:
    - {path: "$OUT/english/english.txt", format: text}
  python:
    - {path: "$OUT/python", format: dir, include: "**/*.py"}
  lua:
    - {path: "$OUT/lua", format: dir, include: "**/*.nse,**/*.lua"}
  stories:  # synthetic (mergelens data stories), a stand-in for TinyStories
    - {path: "$OUT/stories/stories.txt", format: text}
EOF
log "done: $OUT/domains.txt"
