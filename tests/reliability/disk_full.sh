#!/usr/bin/env bash
# Disk full during a write, on a 4 MB tmpfs (needs root and mount; skipped
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
#     bitwise identical model;
#  5. every writer command (train, merge, sweep, capture, sae, eval --out,
#     sae-eval --out, tokenizer train, tokenize, compare, track, track-sweep,
#     lora train/port, region, export hf/saelens) on a disk left with too
#     little room: exit 1 on every rank within the timeout (no hang), one
#     error line naming the file, no crash (no exit 139 in MPI_Finalize), no
#     temporary left, the existing file beside it intact (issue #17 item 6).
set -u
. "${ML_SRC:?}/tests/common/ml_check.sh"
. "$ML_SRC/tests/reliability/lib.sh"
rel_begin disk_full
D=$T/full; mkdir -p "$D"
if ! mount -t tmpfs -o size=4m tmpfs "$D" 2> "$T/mount.err"; then
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
    check "np$np $name: one error line naming the output" bash -c "[ \$(grep -c '^error: ' <<<\"\$0\") -eq 1 ] && grep -qE 'error: (rank [0-9]+: )?$output: cannot write' <<<\"\$0\"" "$out"
    if crashed "$out"; then check "np$np $name: no crash" false; echo "$out" | tail -5; else check "np$np $name: no crash" true; fi
    check "np$np $name: nothing under the output name, no temporary left" test -z "$(ls "$D" | grep -v "$keep")"
  done
}
full_disk_fails capture "$D/acts.h5" '^model.h5$' "$bin" capture "$D/model.h5" --domains "$F/a.h5" --tokens 32768 --context 16 --out "$D/acts.h5"
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
# (room for 1.5 checkpoints and the 256 KB the io layer keeps free while it writes one)
dd if=/dev/zero of="$D/filler" bs=1k count=$((avail - size * 3 / 2 / 1024 - 256)) 2>/dev/null
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
# 5. every writer on a disk with LEAVE KB free (below the io layer's 256 KB
#    reserve: the output cannot even be started; above it: the data does not
#    fit), 1 and 2 ranks; each rank's own exit status is recorded
rm -rf "$D"/*
W=$T/w; mkdir -p "$W"; cd "$W" || exit 1
cp "$F"/*.h5 "$F"/*.txt "$F"/rec.yaml .
(
  set -e
  "$bin" sweep rec.yaml --param t --count 2 --domains a.h5 --eval_windows 8 --out sweep.h5
  "$bin" lora train --host base.h5 --domains b.h5 --out adapter.h5 --steps 2 --context 16 --global_batch 6 --eval_batches 1
) > "$T/inputs.log" 2>&1 || { check "inputs of the writers" false; tail -5 "$T/inputs.log"; }
LORA="--steps 2 --context 16 --global_batch 6 --eval_batches 1"
writers=(
"train|300|$D/o.h5|train --domains a.h5 --out $D/o.h5 $MODEL_ARGS --steps 3"
"merge|300|$D/o.h5|merge rec.yaml --out $D/o.h5"
"sweep|200|$D/o.h5|sweep rec.yaml --param t --count 2 --domains a.h5 --eval_windows 8 --out $D/o.h5"
"capture --checkpoint_every 4|300|$D/o.h5|capture base.h5 --domains a.h5 --tokens 4096 --context 16 --checkpoint_every 4 --out $D/o.h5"
"sae|300|$D/o.h5|sae acts.h5 --out $D/o.h5 --expansion 4 --batch 256 --eval_rows 512"
"eval --out|200|$D/o.h5|eval base.h5 --domains a.h5 --max_batches 1 --out $D/o.h5"
"sae-eval --out|200|$D/o.h5|sae-eval sae.h5 --domains a.h5 --windows 2 --out $D/o.h5"
"tokenizer train|200|$D/o.h5|tokenizer train --out $D/o.h5 --vocab_size 280 --domains a=text:st_b.txt"
"tokenize|300|$D/a.h5|tokenize --tokenizer tok.h5 --out_dir $D --domains a=text:st_a.txt"
"compare|300|$D/o.h5|compare --a sae.h5 --acts_a acts.h5 --b sae.h5 --acts_b acts.h5 --full_matrix true --out $D/o.h5"
"track|300|$D/o.h5|track --edges x:y --saes x=sae.h5,y=sae.h5 --acts x=acts.h5,y=acts.h5 --full_matrix true --out $D/o.h5"
"track-sweep|200|$D/o.h5|track-sweep sweep.h5 --sae sae.h5 --acts acts.h5 --model base.h5 --max_tokens 256 --out $D/o.h5"
"lora train|200|$D/o.h5|lora train --host base.h5 --domains b.h5 --out $D/o.h5 $LORA"
"lora port|200|$D/o.h5|lora port --adapters adapter.h5 --hosts ft.h5 --domains b.h5 --out $D/o.h5 $LORA --conditions ported --seeds 1"
"region|300|$D/c.h5|region --base base.h5 --models a=ft.h5,b=base.h5 --domains a.h5 --eval_windows 8 --alpha_count 2 --random 1 --out $D/o.h5 --centroid_out $D/c.h5"
"export hf|60|$D/hf/model.safetensors|export hf base.h5 $D/hf"
"export saelens|60|$D/sl/sae_weights.safetensors|export saelens sae.h5 $D/sl"
)
echo keep > "$D/existing.txt"; sum_e=$(md5sum < "$D/existing.txt")
for np in 1 2; do
  for c in "${writers[@]}"; do
    IFS='|' read -r name leave output cmd <<<"$c"
    rm -rf "$D"/o.h5 "$D"/c.h5 "$D"/a.h5 "$D"/hf "$D"/sl "$D"/filler rank.*
    avail=$(df -k --output=avail "$D" | tail -1)
    dd if=/dev/zero of="$D/filler" bs=1k count=$((avail - leave)) 2>/dev/null
    out=$(timeout 60 "$mpiexec" --allow-run-as-root --oversubscribe --bind-to none -n "$np" \
          bash -c '"$@"; echo $? > rank.${OMPI_COMM_WORLD_RANK:-0}' _ "$bin" $cmd 2>&1); rc=$?
    codes=$(cat rank.* 2>/dev/null | sort | tr '\n' ' ')
    why=""
    [ $rc -ne 124 ] || why="timed out (hang)"
    [ "$codes" = "$(printf '1 %.0s' $(seq "$np"))" ] || why="$why; rank exits: $codes"
    [ "$(grep -c '^error: ' <<<"$out")" -eq 1 ] || why="$why; $(grep -c '^error: ' <<<"$out") error lines"
    grep -qE "^error: (rank [0-9]+: )?$output: " <<<"$out" || why="$why; the error does not name $output"
    ! crashed "$out" || why="$why; crash"
    left=$(ls -A "$D" | grep -v '^filler$\|^existing.txt$\|^model.h5$' | grep -v '^hf$\|^sl$' | tr '\n' ' ')
    for d in hf sl; do [ -d "$D/$d" ] && left="$left$(ls -A "$D/$d" | sed "s|^|$d/|" | tr '\n' ' ')"; done
    [ -z "$left" ] || why="$why; left behind: $left"
    [ "$(md5sum < "$D/existing.txt")" = "$sum_e" ] || why="$why; an existing file changed"
    if [ -z "$why" ]; then check "np$np $name on a full disk ($leave KB free): $(grep -m1 '^error: ' <<<"$out" | cut -c1-100)" true
    else check "np$np $name on a full disk ($leave KB free):$why" false; echo "$out" | tail -6 | sed 's/^/  | /'; fi
  done
done
rm -f "$D/filler"
# 6. a capture checkpointed in place (--checkpoint_every 4) whose disk fills up after some checkpoints:
#    exit 1 on every rank (no hang), one line, the last checkpoint stays usable (complete = 0), no
#    temporary left; with room again the rerun resumes and equals the uninterrupted run's file
CAP="capture base.h5 --domains a.h5 --tokens 8192 --context 16 --checkpoint_every 4"
# (the reference written under the same name: the stored config holds --out)
rm -rf "$D"/o.h5 "$D"/hf "$D"/sl
{ "$bin" $CAP --out "$D/o.h5" > "$T/cap.log" 2>&1 && mv "$D/o.h5" "$T/ref_acts.h5"; } || check "uninterrupted capture" false
for np in 1 2; do
  rm -rf "$D"/o.h5 "$D"/filler "$D"/hf "$D"/sl rank.*
  avail=$(df -k --output=avail "$D" | tail -1)
  dd if=/dev/zero of="$D/filler" bs=1k count=$((avail - 900)) 2>/dev/null
  out=$(timeout 60 "$mpiexec" --allow-run-as-root --oversubscribe --bind-to none -n "$np" \
        bash -c '"$@"; echo $? > rank.${OMPI_COMM_WORLD_RANK:-0}' _ "$bin" $CAP --out "$D/o.h5" 2>&1); rc=$?
  codes=$(cat rank.* 2>/dev/null | sort | tr '\n' ' ')
  check "np$np capture checkpointed in place on a filling disk: exit 1 on every rank ($rc; $codes)" \
    test "$codes" = "$(printf '1 %.0s' $(seq "$np"))"
  check "np$np capture in place: one error line naming the file" \
    bash -c "[ \$(grep -c '^error: ' <<<\"\$0\") -eq 1 ] && grep -qE '^error: (rank [0-9]+: )?$D/o.h5: cannot write' <<<\"\$0\"" "$out"
  if crashed "$out"; then check "np$np capture in place: no crash" false; echo "$out" | tail -5; else check "np$np capture in place: no crash" true; fi
  check "np$np capture in place: the last checkpoint stays (complete = $(attr "$D/o.h5" complete), batches_done $(attr "$D/o.h5" batches_done))" \
    test "$(attr "$D/o.h5" complete)" = 0
  check "np$np capture in place: no temporary left" test -z "$(ls -A "$D" | grep -v '^filler$\|^existing.txt$\|^model.h5$\|^o.h5$')"
  rm -f "$D/filler"
  ML_LOG_LEVEL=info "$bin" $CAP --out "$D/o.h5" > "$T/cap_resume.log" 2>&1; rc=$?
  check "np$np capture in place: with room again the rerun resumes and succeeds ($rc)" \
    bash -c "[ $rc -eq 0 ] && grep -q 'resuming .* at batch' '$T/cap_resume.log'"
  [ $rc -eq 0 ] || tail -3 "$T/cap_resume.log"
  check "np$np capture in place: the resumed file equals the uninterrupted run's" same_h5 "$T/ref_acts.h5" "$D/o.h5"
done
ml_check_summary disk_full
