# Flatten the YAML subset used by mergelens job files into lines
#   LINE <TAB> dotted.path <TAB> value
# Block mappings, block sequences ("- x" -> path[]), flow mappings {a: 1},
# flow sequences [a, b] (also spanning lines), quoted scalars, comments and
# block scalars (| and >, skipped) are understood. Anchors, aliases and
# multi-document files are not (mergelens rejects anchors anyway).
# Used by slurm/submit to read `needs` and `slurm` keys; `mergelens run
# --dry_run` validates the same file with the real parser first.

function strip_comment(s,    i, c, q, out) {
  q = ""
  for (i = 1; i <= length(s); i++) {
    c = substr(s, i, 1)
    if (q != "") { if (c == q) q = "" }
    else if (c == "\"" || c == "'") q = c
    else if (c == "#" && (i == 1 || substr(s, i - 1, 1) ~ /[ \t]/)) return substr(s, 1, i - 1)
  }
  return s
}

function trim(s) { sub(/^[ \t]+/, "", s); sub(/[ \t]+$/, "", s); return s }

function unquote(s) {
  s = trim(s)
  if (s ~ /^".*"$/ || s ~ /^'.*'$/) return substr(s, 2, length(s) - 2)
  return s
}

# depth of unclosed [ and { outside quotes
function open_depth(s,    i, c, q, d) {
  q = ""; d = 0
  for (i = 1; i <= length(s); i++) {
    c = substr(s, i, 1)
    if (q != "") { if (c == q) q = "" }
    else if (c == "\"" || c == "'") q = c
    else if (c == "[" || c == "{") d++
    else if (c == "]" || c == "}") d--
  }
  return d
}

# split the inside of a flow collection at top-level commas into parts[1..n]
function split_flow(s, parts,    i, c, q, d, n, cur) {
  q = ""; d = 0; n = 0; cur = ""
  for (i = 1; i <= length(s); i++) {
    c = substr(s, i, 1)
    if (q != "") { if (c == q) q = ""; cur = cur c; continue }
    if (c == "\"" || c == "'") q = c
    else if (c == "[" || c == "{") d++
    else if (c == "]" || c == "}") d--
    else if (c == "," && d == 0) { if (trim(cur) != "") parts[++n] = trim(cur); cur = ""; continue }
    cur = cur c
  }
  if (trim(cur) != "") parts[++n] = trim(cur)
  return n
}

function emit(line, path, v,    parts, n, i, k, p) {
  v = trim(v)
  if (v ~ /^\{.*\}$/) {
    n = split_flow(substr(v, 2, length(v) - 2), parts)
    for (i = 1; i <= n; i++) {
      p = index(parts[i], ":")
      if (p == 0) { emit(line, path "." unquote(parts[i]), ""); continue }
      k = unquote(substr(parts[i], 1, p - 1))
      emit(line, path "." k, substr(parts[i], p + 1))
    }
  } else if (v ~ /^\[.*\]$/) {
    n = split_flow(substr(v, 2, length(v) - 2), parts)
    for (i = 1; i <= n; i++) emit(line, path "[]", parts[i])
  } else {
    printf "%d\t%s\t%s\n", line, path, unquote(v)
  }
}

function stack_path(    i, p) {
  p = ""
  for (i = 1; i <= sp; i++) p = p (i > 1 ? "." : "") skey[i]
  return p
}

BEGIN { sp = 0; pending = ""; skip_indent = -1 }

{
  raw = $0
  sub(/\r$/, "", raw)
  if (pending != "") {               # continuation of a multi-line flow value
    pend_text = pend_text " " trim(strip_comment(raw))
    if (open_depth(pend_text) <= 0) { emit(pend_line, pending, pend_text); pending = "" }
    next
  }
  match(raw, /^ */)
  indent = RLENGTH
  if (skip_indent >= 0) {            # inside a block scalar
    if (trim(raw) == "" || indent > skip_indent) next
    skip_indent = -1
  }
  s = strip_comment(raw)
  if (trim(s) == "" || s ~ /^(---|\.\.\.)/) next
  body = substr(s, indent + 1)
  if (body ~ /^-( |$)/) {            # block sequence item
    while (sp > 0 && sind[sp] > indent) sp--
    emit(NR, stack_path() "[]", substr(body, 2))
    next
  }
  if (match(body, /^("[^"]*"|'[^']*'|[^:{}\[\]"'][^:]*):( |$)/) == 0) next
  key = unquote(substr(body, 1, RLENGTH - (substr(body, RLENGTH, 1) == ":" ? 1 : 2)))
  val = trim(substr(body, RLENGTH + 1))
  while (sp > 0 && sind[sp] >= indent) sp--
  path = stack_path()
  path = path (path == "" ? "" : ".") key
  if (val == "") { sp++; sind[sp] = indent; skey[sp] = key; next }
  if (val ~ /^[|>][-+0-9]*$/) { skip_indent = indent; next }
  if (open_depth(val) > 0) { pending = path; pend_text = val; pend_line = NR; next }
  emit(NR, path, val)
}
