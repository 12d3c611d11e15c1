#!/usr/bin/env bash
# pipeline: every stage's options are checked against its command's option
# table when the job file is loaded (run --dry_run, run --plan, slurm/submit),
# with the job file's line, the stage and a suggestion; nothing runs.
set -u
bin=${ML_BIN:?}; src=${ML_SRC:?}
tmp=$(mktemp -d "${ML_TEST_TMP:-/tmp}/pipeline-check.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
. "$src/tests/common/ml_check.sh"
export OMPI_MCA_ess_singleton_isolated=1

cat > "$tmp/typo.yaml" <<EOF
run_dir: $tmp/run
stages:
  ok:
    command: doctor
    options: {gemm_n: 64, dir: "\${run_dir}"}
  cap:
    command: capture
    needs: [ok]
    options:
      out: acts/base.h5
      tokns: 4096
EOF
want="typo.yaml:11: unknown key 'tokns' for stage 'cap' (mergelens capture; did you mean 'tokens'?)"
ml_one_line "run --dry_run: misspelt option with line and suggestion" "error: $tmp/$want" "$bin" run "$tmp/typo.yaml" --dry_run
ml_one_line "run --plan: the same error" "$want" "$bin" run "$tmp/typo.yaml" --plan
ml_one_line "run: the same error before any stage runs" "$want" "$bin" run "$tmp/typo.yaml"
check "nothing ran (no run directory made)" test ! -e "$tmp/run"
ml_one_line "slurm/submit --dry-run: the same error" "slurm/submit: error: $tmp/$want" "$src/slurm/submit" "$tmp/typo.yaml" --dry-run
ml_one_line "slurm/submit --dry-run [yaml reader]: the same error" "slurm/submit: error: $tmp/$want" \
  env ML_SUBMIT_PLAN=yaml "$src/slurm/submit" "$tmp/typo.yaml" --dry-run
check "slurm/submit wrote no batch script" test ! -e "$tmp/run"

printf 'stages:\n  lt:\n    command: lora\n    args: [train]\n    options: {host: m.h5, lr_x: 1}\n' > "$tmp/lora.yaml"
ml_one_line "sub-subcommand table (lora train)" "lora.yaml:5: unknown key 'lr_x' for stage 'lt' (mergelens lora train; did you mean 'lr'?)" \
  "$bin" run "$tmp/lora.yaml" --dry_run
printf 'stages:\n  d:\n    command: doctor\n    options:\n      zzzzzzzz: 1\n' > "$tmp/nohint.yaml"
ml_one_line "no suggestion when nothing is close" "nohint.yaml:5: unknown key 'zzzzzzzz' for stage 'd' (mergelens doctor)" \
  "$bin" run "$tmp/nohint.yaml" --dry_run
printf 'stages:\n  d:\n    command: doctor\n    options:\n      dir: /tmp\n      gemm_n: 10\n' > "$tmp/range.yaml"
ml_one_line "out-of-range value with line and stage" "range.yaml:6: stage 'd' (mergelens doctor): " "$bin" run "$tmp/range.yaml" --dry_run
printf 'stages:\n  d:\n    command: doctor\n    options: {gemm_n: many}\n' > "$tmp/type.yaml"
ml_one_line "mistyped value with line and stage" "type.yaml:4: stage 'd' (mergelens doctor): " "$bin" run "$tmp/type.yaml" --dry_run
printf 'stages:\n  v:\n    command: version\n    options: {verbose: true}\n' > "$tmp/version.yaml"
ml_one_line "a command without options rejects every key" "version.yaml:4: unknown key 'verbose' for stage 'v' (mergelens version)" \
  "$bin" run "$tmp/version.yaml" --dry_run

# valid options pass without running anything: inputs and --config files may
# not exist yet, required keys may come from --config
cat > "$tmp/good.yaml" <<EOF
run_dir: $tmp/good
stages:
  look: {command: inspect, args: [no/such/file.h5], options: {all: true}}
  cfg: {command: train, options: {config: no/such/config.yaml, gemm-n-is-not: 1}}
EOF
ml_one_line "dash spelling is normalised like on the command line" "good.yaml:4: unknown key 'gemm-n-is-not' for stage 'cfg' (mergelens train" \
  "$bin" run "$tmp/good.yaml" --dry_run
sed -i 's/, gemm-n-is-not: 1//' "$tmp/good.yaml"
out=$("$bin" run "$tmp/good.yaml" --dry_run 2>&1); rc=$?
check "valid options pass, nothing runs (missing input and --config file)" bash -c '[ $0 -eq 0 ] &&
  grep -qx "stage look: inspect no/such/file.h5 --all true" <<<"$1"' "$rc" "$out"
# the job files in jobs/ validate against the real tables
for f in "$src"/jobs/*.yaml; do
  o=$("$bin" run "$f" --plan --out "$tmp/jobs" 2>&1); rc=$?
  check "jobs/$(basename "$f") validates" bash -c '[ $0 -eq 0 ] || { echo "  $1"; exit 1; }' "$rc" "$(grep -m1 error <<<"$o")"
done
ml_check_summary "pipeline check"
