# ml_array_sweep_job FILE NAME RUN_DIR RECIPE DOMAINS: a job file with a
# 101-point sweep as a 4-task array stage (each task its own part under
# sweeps/parts/) and the sweep-combine stage after it (shared by slurm_array,
# slurm_array_sweep and slurm_cluster).
ml_array_sweep_job() {
  cat > "$1" <<EOF2
name: $2
run_dir: $3
stages:
  sweep:
    command: sweep
    args: ["$4"]
    options: {param: t, from: 0, to: 1, count: 101, domains: "$5", eval_windows: 8,
              out: "\${run_dir}/sweeps/parts/slerp.\${task}.h5"}
    outputs: ["sweeps/parts/slerp.\${task}.h5"]
    slurm: {array: 4, ntasks: 1, time: "00:05:00"}
  combine:
    command: sweep-combine
    needs: [sweep]
    args: [{each_task: "\${run_dir}/sweeps/parts/slerp.\${task}.h5", of: sweep}]
    options: {out: "\${run_dir}/sweeps/slerp.h5"}
    outputs: [sweeps/slerp.h5]
EOF2
}
