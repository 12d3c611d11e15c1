#!/usr/bin/env bash
# Disk full during a write, on a 2 MB tmpfs (needs root and mount; skipped
# with the reason otherwise), on 1 and 2 ranks:
#  1. capture whose activations do not fit: a clear one-line error naming the
#     output, a non-zero exit, no crash, nothing left under the output name,
#     no temporary file left (its space is given back);
#  2. retraining over an existing complete model while the disk is nearly
#     full: same, and the existing file is unchanged (same checksum) and still
#     valid (`mergelens eval` reads it);
#  3. a merge whose output does not fit: the same;
#  4. a training run whose disk fills up between checkpoints: the last
#     checkpoint stays valid and the rerun, with room again, resumes to a
#     bitwise identical model.
set -u
. "${ML_SRC:?}/tests/common/ml_check.sh"
. "$ML_SRC/tests/reliability/lib.sh"
rel_begin disk_full
D=$T/full; mkdir -p "$D"
if ! mount -t tmpfs -o size=2m tmpfs "$D" 2> "$T/mount.err"; then
  echo "SKIP disk_full: cannot mount a tmpfs ($(head -1 "$T/mount.err")); needs root"
  rm -rf "$T"; exit 0
fi
# (an MPI singleton's helper daemon may still sit in $D for a moment)
unmount() { for _ in $(seq 20); do umount "$D" 2>/dev/null && return; sleep 0.25; done; umount -l "$D"; }
trap 'unmount; rm -rf "$T"' EXIT
TRAIN="--domains $F/a.h5 $MODEL_ARGS --steps 20"
"$bin" train $TRAIN --out "$D/model.h5" > "$T/log" 2>&1 || { check "model written to the tmpfs" false; tail -3 "$T/log"; }
sum0=$(md5sum < "$D/model.h5")
crashed() { grep -qE "MPI_ABORT|Segmentation|Process received signal|AddressSanitizer|runtime error" <<<"$1"; }
# full_disk_fails NAME OUTPUT KEEP_REGEX CMD...: on 1 and 2 ranks CMD fails with one error line
# naming OUTPUT, does not crash, and leaves nothing in $D but files matching KEEP_REGEX
full_disk_fails() {
  local name=$1 output=$2 keep=$3; shift 3
  for np in 1 2; do
    out=$(mpirun_n "$np" "$@" 2>&1); rc=$?
    check "np$np $name on a full disk fails ($rc): $(grep -m1 "^error: " <<<"$out")" test $rc -ne 0
    check "np$np $name: one error line naming the output" bash -c "[ \$(grep -c '^error: ' <<<\"\$0\") -eq 1 ] && grep -qF 'error: $output: cannot write' <<<\"\$0\"" "$out"
    if crashed "$out"; then check "np$np $name: no crash" false; echo "$out" | tail -5; else check "np$np $name: no crash" true; fi
    check "np$np $name: nothing under the output name, no temporary left" test -z "$(ls "$D" | grep -v "$keep")"
  done
}
full_disk_fails capture "$D/acts.h5" '^model.h5$' "$bin" capture "$D/model.h5" --domains "$F/a.h5" --tokens 16384 --context 16 --out "$D/acts.h5"
# nearly full: an overwrite of model.h5 (resume false) cannot fit
avail=$(df -k --output=avail "$D" | tail -1)
dd if=/dev/zero of="$D/filler" bs=1k count=$((avail - 150)) 2>/dev/null
for np in 1 2; do
  out=$(mpirun_n "$np" "$bin" train $TRAIN --out "$D/model.h5" --seed 5 --resume false 2>&1); rc=$?
  msg=$(grep -m1 "^error: " <<<"$out")
  check "np$np overwrite on a full disk fails ($rc): $msg" test $rc -ne 0
  check "np$np overwrite: the error names the output" grep -qF "error: $D/model.h5: " <<<"$out"
  if crashed "$out"; then check "np$np overwrite: no crash" false; echo "$out" | tail -5; else check "np$np overwrite: no crash" true; fi
  check "np$np overwrite: the existing model is unchanged" test "$(md5sum < "$D/model.h5")" = "$sum0"
  check "np$np overwrite: no temporary left" test -z "$(ls "$D" | grep -v '^model.h5$\|^filler$')"
done
# a merge whose output cannot fit (its tensors go through raw pwrite on a writer thread):
# leave 40 KB, less than the model's tensors
avail=$(df -k --output=avail "$D" | tail -1)
dd if=/dev/zero of="$D/filler2" bs=1k count=$((avail - 40)) 2>/dev/null
full_disk_fails merge "$D/merged.h5" '^model.h5$\|^filler2\?$' "$bin" merge "$F/rec.yaml" --out "$D/merged.h5"
rm -f "$D/filler2"
rm -f "$D/filler"
"$bin" eval "$D/model.h5" --domains "$F/a.h5" > "$T/eval.log" 2>&1
check "the existing model still validates (eval reads it)" test $? -eq 0
# 4. the disk fills up between two checkpoints of a training run: the last
#    checkpoint stays usable and, once there is room, the rerun resumes and
#    ends bitwise equal to an uninterrupted run
rm -f "$D/model.h5"
CK="--domains $F/a.h5 $MODEL_ARGS --steps 30 --checkpoint_every 10"
mkdir -p "$T/ref" && (cd "$T/ref" && "$bin" train $CK --out ck.h5) > "$T/ref.log" 2>&1 || check "uninterrupted run" false
size=$(stat -c %s "$T/ref/ck.h5")
avail=$(df -k --output=avail "$D" | tail -1)
dd if=/dev/zero of="$D/filler" bs=1k count=$((avail - size * 3 / 2 / 1024)) 2>/dev/null
out=$(cd "$D" && "$bin" train $CK --out ck.h5 2>&1); rc=$?
check "training on a filling disk fails ($rc): $(grep -m1 '^error: ' <<<"$out")" test $rc -ne 0
check "the error names the checkpoint" grep -qF "error: ck.h5: " <<<"$out"
step=$(h5dump -a /train/step "$D/ck.h5" 2>/dev/null | sed -n 's/^ *(0): *//p')
check "the last checkpoint is intact (complete = $(attr "$D/ck.h5" complete), step $step)" test "$(attr "$D/ck.h5" complete)" = 0
check "no temporary left" test -z "$(ls "$D" | grep -v '^ck.h5$\|^filler$')"
rm -f "$D/filler"
(cd "$D" && "$bin" train $CK --out ck.h5) > "$T/resume.log" 2>&1
check "with room again the rerun resumes from step $step and succeeds" test $? -eq 0
check "the resumed model equals the uninterrupted run's bit for bit" same_h5 "$T/ref/ck.h5" "$D/ck.h5"
ml_check_summary disk_full
