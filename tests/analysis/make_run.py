#!/usr/bin/env python3
"""Write a small synthetic mergelens RUN_DIR in the documented layouts (docs/FORMAT.md,
docs/modules/*.md) with h5py: tokenizer, token store, checkpoints with /train/log and /train/eval,
mergelens.eval files (merge, lua), two activation files sharing their tokens, two SAE files with
/metrics and /features (base sparse, lua dense), sae-eval files, a sweep, a tracking file whose edges
have a full calibration group, one with NaN ceilings (no replicas) and none, and experiment.h5.
usage: make_run.py RUN_DIR"""
import json
import os
import sys

import h5py
import numpy as np

VOCAB = [bytes([b]) for b in range(256)] + [b" the", b" cat", b"def", b" end", b"\xc3\xa9t\xc3\xa9",
                                            b"<bos>", b"<|endoftext|>", b"<pad>"]
SPECIAL = {len(VOCAB) - 3, len(VOCAB) - 2, len(VOCAB) - 1}
STR = h5py.string_dtype()


def common(f, fmt, version=1, config="{}"):
    f.attrs["format"] = fmt
    f.attrs["format_version"] = np.int32(version)
    f.attrs["mergelens_version"] = "0.1.0-test"
    f.attrs["git_commit"] = "deadbeef"
    f.attrs["config"] = config


def tokenizer(path):
    with h5py.File(path, "w") as f:
        common(f, "mergelens.tokenizer")
        off = np.cumsum([0] + [len(t) for t in VOCAB]).astype(np.int64)
        f["vocab/bytes"] = np.frombuffer(b"".join(VOCAB), dtype=np.uint8)
        f["vocab/offsets"] = off
        f["vocab/flags"] = np.array([1 if i in SPECIAL else 0 for i in range(len(VOCAB))], np.uint8)
        f["merges"] = np.zeros((0, 3), np.int32)
        f.attrs["vocab_size"] = np.int32(len(VOCAB))
        f.attrs["strip_decode"] = np.int32(0)


def store(path, domain, tok):
    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as f:
        common(f, "mergelens.tokens")
        for split in ("train", "val"):
            f[split + "/tokens"] = rng.integers(0, 256, 400).astype(np.uint16)
            f[split + "/doc_offsets"] = np.array([0, 200, 400], np.int64)
        f.attrs["domain"] = domain
        f.attrs["vocab_size"] = np.int32(len(VOCAB))
        f.attrs["tokenizer"] = tok


def checkpoint(path, parent="", steps=60, domains=("lua", "stories"), recipe=None, seed=0):
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        common(f, "mergelens.checkpoint")
        f.attrs["model_config"] = json.dumps({"model_type": "mistral", "vocab_size": len(VOCAB), "hidden_size": 8})
        f.attrs["parent"] = parent
        f.attrs["complete"] = np.int32(1)
        f.attrs["tokenizer"] = "data/tokenizer.h5"
        f["params/model.norm.weight"] = np.ones(8, np.float32)
        if recipe is not None:
            f.attrs["merge_recipe"] = json.dumps(recipe)
            return
        s = np.arange(1, steps + 1, dtype=np.int64)
        loss = 5.5 * np.exp(-s / 20.0) + 1.5 + 0.05 * rng.standard_normal(steps)
        f["train/log/step"] = s
        f["train/log/tokens"] = s * 512
        f["train/log/loss"] = loss
        f["train/log/lr"] = 6e-4 * np.cos(np.pi * s / (2 * steps))
        f["train/log/grad_norm"] = 1.0 + 0.1 * rng.random(steps)
        f["train/log/tokens_per_s"] = np.full(steps, 1e4)
        es = np.repeat([steps // 2, steps], len(domains)).astype(np.int64)
        ed = np.tile(np.arange(len(domains)), 2).astype(np.int32)
        f["train/eval/step"] = es
        f["train/eval/domain"] = ed
        f["train/eval/loss"] = 2.0 + 0.3 * ed - 0.2 * (es == steps) + 0.01 * seed
        f["train/eval/accuracy"] = 0.4 - 0.05 * ed + 0.02 * (es == steps)
        f["train/eval/n_tokens"] = np.full(len(es), 4096, np.int64)
        f["train"].attrs["step"] = np.int64(steps)
        f["train/eval"].attrs["domains"] = json.dumps(list(domains))


def eval_file(path, model, domains=("lua", "stories"), loss=(2.4, 2.6), acc=(0.33, 0.31), ntok=None):
    with h5py.File(path, "w") as f:
        common(f, "mergelens.eval")
        f.attrs["model"] = model
        f.attrs["domains"] = json.dumps(list(domains))
        f["loss"] = np.array(loss)
        f["accuracy"] = np.array(acc)
        f["n_targets"] = np.array([1000, 1000], np.int64)
        if ntok is not None:
            f["n_tokens"] = np.array(ntok, np.int64)
            f["n_windows"] = np.array(ntok, np.int64) // 128
            f["windows_available"] = np.array([400, 300], np.int64)
            f.attrs["eval_order"] = "random"
            f.attrs["eval_seed"] = np.int64(42)


N_ROWS, D_IN, HOOK = 1000, 8, "blocks.0.mlp.hook_post"


def acts(path, model, seed):
    """An activations file: the same tokens in every model's capture, model-specific activations
    (float16 in one of them, as `capture --dtype float16` writes)."""
    rng = np.random.default_rng(seed)
    tok = np.random.default_rng(99).integers(0, 256, N_ROWS).astype(np.int32)
    x = rng.standard_normal((N_ROWS, D_IN)).astype(np.float32)
    with h5py.File(path, "w") as f:
        common(f, "mergelens.activations")
        f.attrs["model"] = model
        f.attrs["hooks"] = json.dumps([HOOK])
        if seed % 2:
            d = f.create_dataset("hooks/%s/acts" % HOOK, data=x.astype(np.float16).view(np.uint16))
            d.attrs["encoding"] = "float16"
        else:
            f["hooks/%s/acts" % HOOK] = x
        f["tokens"] = tok


def sae_eval(path, sae_path, model, ce=(0.9, 0.8, 0.95)):
    with h5py.File(path, "w") as f:
        common(f, "mergelens.sae_eval")
        for k, v in (("sae", sae_path), ("model", model), ("hook_name", HOOK), ("split", "val"),
                     ("order", "seeded")):
            f.attrs[k] = v
        f.attrs["domains"] = json.dumps(["lua", "stories"])
        f.attrs["seed"] = np.int64(42)
        f.attrs["context"] = np.int64(64)
        f.attrs["n_windows"] = np.int64(64)
        f.attrs["n_targets"] = np.int64(4096)
        for k, v in (("loss_clean", 2.0), ("loss_zero", 4.0), ("loss_spliced", 4.0 - 2.0 * ce[0]),
                     ("ce_recovered", ce[0]), ("acc_clean", 0.4), ("acc_zero", 0.1), ("acc_spliced", 0.35)):
            f.attrs[k] = v
        f["per_domain/ce_recovered"] = np.array(ce[1:])
        f["per_domain/loss_clean"] = np.array([2.0, 2.0])
        f["per_domain/windows"] = np.array([32, 32], np.int64)
        f["per_domain/targets"] = np.array([2048, 2048], np.int64)


def sae(path, model, d_sae=24, d_in=D_IN, K=4, Q=3, L=3, R=2, seed=0, l0=12.5, dense=0.0):
    rng = np.random.default_rng(seed)
    W = L + 1 + R
    with h5py.File(path, "w") as f:
        common(f, "mergelens.sae")
        f["W_enc"] = rng.standard_normal((d_in, d_sae)).astype(np.float32)
        f["b_enc"] = np.zeros(d_sae, np.float32)
        f["W_dec"] = rng.standard_normal((d_sae, d_in)).astype(np.float32)
        f["b_dec"] = np.zeros(d_in, np.float32)
        for k, v in (("architecture", "standard"), ("hook_name", "blocks.0.mlp.hook_post"), ("model", model)):
            f.attrs[k] = v
        f.attrs["k"] = np.int32(0)
        f.attrs["d_in"] = np.int32(d_in)
        f.attrs["d_sae"] = np.int32(d_sae)
        f.attrs["l1_coefficient"] = 3e-4
        T = 5
        m = f.create_group("metrics")
        m["step"] = np.arange(1, T + 1, dtype=np.int64) * 100
        m["tokens"] = m["step"][()] * 3072
        for k, v in (("loss", 1.0), ("mse", 0.1), ("fvu", 0.5), ("l0", 40.0), ("loss_l1", 0.1), ("loss_aux", 0.0),
                     ("dead_fraction", 0.2), ("dense_fraction", 0.05)):
            m[k] = v * np.linspace(1.0, 0.5, T)
        m["resampled"] = np.zeros(T, np.int64)
        m["density_hist"] = rng.integers(0, 5, (T, 40)).astype(np.int64)
        m["density_hist_zero"] = np.full(T, 2, np.int64)
        m["tokens_since_fired"] = np.zeros(d_sae, np.int64)
        m.attrs["hist_lo"] = -10.0
        m.attrs["hist_step"] = 0.25
        m.attrs["hist_bins"] = np.int32(40)
        e = m.create_group("eval")
        for k, v in (("mse", 0.05), ("fvu", 0.3), ("l0", l0), ("dead_fraction", 1 / 12), ("dense_fraction", dense)):
            e.attrs[k] = v
        e["density_hist"] = rng.integers(0, 6, 40).astype(np.int64)
        e["density_hist"].attrs["zero"] = np.int64(2)
        fe = f.create_group("features")
        fe.attrs["ctx_left"] = np.int32(L)
        fe.attrs["ctx_right"] = np.int32(R)
        count = rng.integers(1, 50, d_sae).astype(np.int64)
        count[:2] = 0
        fe["count"] = count
        fe["density"] = count / 1000.0
        fe["max_act"] = rng.uniform(1, 5, d_sae).astype(np.float32)
        fe["mean_act"] = fe["max_act"][()] / 2
        fe["top_rows"] = rng.integers(L, N_ROWS - R, (d_sae, K)).astype(np.int64)
        fe["top_acts"] = np.sort(rng.uniform(0, 5, (d_sae, K)), axis=1)[:, ::-1].astype(np.float32)
        toks = rng.integers(0, len(VOCAB), (d_sae, K, W)).astype(np.int32)
        toks[:, :, 0] = -1  # outside the document
        toks[:, 0, L] = 256 + 4  # "été" (multi-byte UTF-8) at the example's token
        toks[:2] = -1
        fe["top_tokens"] = toks
        fe["top_window_acts"] = rng.uniform(0, 5, (d_sae, K, W)).astype(np.float32) * (toks >= 0)
        fe["quantile_rows"] = np.zeros((d_sae, Q), np.int64)
        fe["quantile_acts"] = np.zeros((d_sae, Q), np.float32)
        fe["quantile_levels"] = np.zeros((d_sae, Q), np.float32)
        fe["quantile_tokens"] = np.full((d_sae, Q, W), -1, np.int32)
        fe["quantile_window_acts"] = np.zeros((d_sae, Q, W), np.float32)


def sweep(path):
    grid = np.linspace(0, 1, 6)
    with h5py.File(path, "w") as f:
        common(f, "mergelens.sweep")
        f.attrs["param"] = "t"
        f.attrs["domains"] = json.dumps(["lua", "stories"])
        f.attrs["models"] = json.dumps(["models/lua.h5", "models/stories.h5"])
        f.attrs["from"], f.attrs["to"] = 0.0, 1.0
        f["tokens"] = np.array([16384, 16384], np.int64)
        f["grid"] = grid
        f["loss"] = np.stack([2.0 + grid, 3.0 - grid], axis=1)
        f["accuracy"] = np.stack([0.5 - 0.2 * grid, 0.3 + 0.2 * grid], axis=1)
        f["reference/loss"] = np.array([2.7, 2.9])
        f["reference/accuracy"] = np.array([0.35, 0.32])


def calibration(g, tau_edge, nan_ceiling=False):
    """/edges/<edge>/calibration in the calibration contract: f64 [T] datasets and attributes. Values:
    persist = 0.5 - 0.5 (tau - 0.5), ceiling = persist + 0.3, floor = 0.05, normalised from them."""
    c = g.create_group("calibration")
    tau = np.array([0.5, 0.6, 0.7, 0.8, 0.9])
    persist = 0.5 - 0.5 * (tau - 0.5)
    ceil = persist + 0.3
    if nan_ceiling:
        ceil = np.full(len(tau), np.nan)
    floor = np.full(len(tau), 0.05)
    norm = (persist - floor) / (ceil - floor)
    for k, v, w in (("persist", persist, 0.02), ("emerge", 1 - persist, 0.02), ("disappear", 1 - persist, 0.02),
                    ("ceiling", ceil, 0.01), ("floor", floor, 0.01), ("normalised", norm, 0.05)):
        c[k] = v
        c[k + "_lo"] = v - w
        c[k + "_hi"] = v + w
    c["tau"] = tau
    for k, v in (("measure", "activation"), ("interval", 0.95), ("bootstrap", np.int64(200)),
                 ("block_tokens", np.int64(128)), ("n_tokens", np.int64(8192)), ("rows_start", np.int64(32768)),
                 ("rows_end", np.int64(40960)), ("replicas_parent", np.int64(0 if nan_ceiling else 2)),
                 ("replicas_child", np.int64(0 if nan_ceiling else 2)), ("stable_min", np.int64(0)),
                 ("ceiling_source", "no replicas" if nan_ceiling else "replicas base#0-base#1"),
                 ("floor_source", "token shift")):
        c.attrs[k] = v


def tracking(path, fp=24, fc=24, tau=0.8):
    rng = np.random.default_rng(3)
    with h5py.File(path, "w") as f:
        common(f, "mergelens.tracking")
        f.attrs["tau"] = tau
        f.attrs["status_codes"] = json.dumps({"1": "persist", "2": "disappear", "3": "emerge", "4": "dead"})
        names = ["base->lua", "lua->merge", "base->merge"]
        allc = []
        for e in names:
            g = f.create_group("edges/" + e)
            g.attrs["parent"], g.attrs["child"] = e.split("->")
            g.attrs["measure"] = "activation"
            g.attrs["tau"] = tau
            if e == "base->lua":
                g.attrs["parent_acts"] = "acts/base.h5"
                g.attrs["child_acts"] = "acts/lua.h5"
                calibration(g, tau)
            elif e == "lua->merge":
                calibration(g, tau, nan_ceiling=True)
            ps = np.where(np.arange(fp) < 2, 4, np.where(np.arange(fp) % 3 == 0, 2, 1)).astype(np.uint8)
            cs = np.where(np.arange(fc) < 2, 4, np.where(np.arange(fc) % 4 == 0, 3, 1)).astype(np.uint8)
            g["parent_status"], g["child_status"] = ps, cs
            g["parent_partner"] = rng.permutation(fc).astype(np.int32)
            g["child_partner"] = rng.permutation(fp).astype(np.int32)
            g["parent_score"] = np.where(ps == 1, 0.9, 0.3).astype(np.float32)
            g["child_score"] = np.where(cs == 1, 0.92, 0.2).astype(np.float32)
            c = [int(np.sum(ps == 1)), int(np.sum(ps == 2)), int(np.sum(ps == 4)),
                 int(np.sum(cs == 1)), int(np.sum(cs == 3)), int(np.sum(cs == 4))]
            allc.append(c)
            g["counts"] = np.array(c, np.int64)
            g["shares"] = np.array([c[0] / (c[0] + c[1]), c[1] / (c[0] + c[1]), c[3] / (c[3] + c[4]),
                                    c[4] / (c[3] + c[4])])
            if e != "base->lua":
                continue
            for m in ("activation", "decoder_cos"):
                mg = g.create_group(m)
                mg["a_score"] = rng.uniform(0, 1, fp).astype(np.float32)
                mg["b_score"] = rng.uniform(0, 1, fc).astype(np.float32)
                mg["a_partner"] = np.zeros(fp, np.int32)
                mg["b_partner"] = np.zeros(fc, np.int32)
                mg["a_dead"] = (ps == 4).astype(np.uint8)
                mg["b_dead"] = (cs == 4).astype(np.uint8)
                mg.attrs["a_mean"] = float(np.mean(mg["a_score"][()]))
                mg.attrs["b_mean"] = float(np.mean(mg["b_score"][()]))
        s = f.create_group("summary")
        s.attrs["edges"] = json.dumps(names)
        s["counts"] = np.array(allc, np.int64)


def weightspace(path):
    """A weight-space result (format name only assumed: the report matches 'weight' in it)."""
    with h5py.File(path, "w") as f:
        common(f, "mergelens.weightspace")
        f.attrs["models"] = json.dumps(["base", "lua", "merge"])
        f["model"] = np.array([b"base", b"lua", b"merge"], dtype=STR)
        f["l2_from_base"] = np.array([0.0, 1.25, 0.75])
        f["task_vector_cos"] = np.array([[1.0, 0.2, 0.5], [0.2, 1.0, 0.7], [0.5, 0.7, 1.0]])


def experiment(path, run):
    with h5py.File(path, "w") as f:
        common(f, "mergelens.experiment")
        f.attrs["job_file"] = "jobs/tiny.yaml"
        f.attrs["job_yaml"] = "name: tiny\nrun_dir: %s\n" % run
        f.attrs["hosts"] = json.dumps(["node1"])
        f.attrs["ranks"] = np.int32(2)
        f.attrs["started"] = "2024-01-01T00:00:00Z"
        f.attrs["finished"] = "2024-01-01T00:10:00Z"
        f.attrs["run_dir"] = run
        long_argv = ["sweep", "runs/tiny/recipes/merge.yaml"] + [
            "--%s" % k for k in ("param t --from 0 --to 1 --count 11 --eval_windows 32 --eval_seed 42 --reference "
                                 "runs/tiny/models/base.h5 --domains runs/tiny/data/stories.h5,runs/tiny/data/"
                                 "lua.h5,runs/tiny/data/english.h5,runs/tiny/data/python.h5 --out runs/tiny/sweeps/"
                                 "slerp.h5").split(" --")]
        spec = ";".join("%s=text:/work/runs/tiny/corpora/%s/%s.txt" % (d, d, d)
                        for d in ("english", "python", "lua", "stories"))  # 200 characters, no space
        for st, cmd, argv in (("base", "train", ["train", "--out", "models/base.h5"]),
                              ("tokenize", "tokenize", ["tokenize", "--domains", spec]),
                              ("merge", "merge", ["merge", "--out", "models/merge.h5"]),
                              ("sweep", "sweep", long_argv)):  # a real argv: longer than the page is wide
            g = f.create_group("stages/" + st)
            g.attrs["command"] = cmd
            g.attrs["status"] = "done"
            g.attrs["seconds"] = 12.5
            g.attrs["argv"] = json.dumps(argv)
        f.create_group("outputs/base")
        f["outputs/base/base"] = h5py.ExternalLink("models/base.h5", "/")


def main():
    run = sys.argv[1]
    for d in ("data", "models", "acts", "saes", "sweeps", "tracking"):
        os.makedirs(os.path.join(run, d), exist_ok=True)
    tokenizer(os.path.join(run, "data", "tokenizer.h5"))
    store(os.path.join(run, "data", "lua.h5"), "lua", "data/tokenizer.h5")
    checkpoint(os.path.join(run, "models", "base.h5"), seed=0)
    checkpoint(os.path.join(run, "models", "lua.h5"), parent="models/base.h5", seed=1)
    checkpoint(os.path.join(run, "models", "merge.h5"), parent="models/lua.h5",
               recipe={"merge_method": "slerp", "parameters": {"t": 0.58}})
    eval_file(os.path.join(run, "models", "merge.eval.h5"), "models/merge.h5")
    os.makedirs(os.path.join(run, "eval"), exist_ok=True)
    eval_file(os.path.join(run, "eval", "lua.h5"), "models/lua.h5", loss=(1.7, 2.9), acc=(0.45, 0.3),
              ntok=(16384, 16384))
    acts(os.path.join(run, "acts", "base.h5"), "models/base.h5", seed=4)
    acts(os.path.join(run, "acts", "lua.h5"), "models/lua.h5", seed=5)
    sae(os.path.join(run, "saes", "base.h5"), "models/base.h5", seed=0, l0=2.0, dense=0.0)
    sae(os.path.join(run, "saes", "lua.h5"), "models/lua.h5", seed=1, l0=12.5, dense=0.05)
    os.makedirs(os.path.join(run, "sae_eval"), exist_ok=True)
    sae_eval(os.path.join(run, "sae_eval", "base.h5"), "saes/base.h5", "models/base.h5", ce=(0.9, 0.8, 0.95))
    sae_eval(os.path.join(run, "sae_eval", "lua.h5"), "saes/lua.h5", "models/lua.h5", ce=(0.75, 0.7, 0.8))
    sweep(os.path.join(run, "sweeps", "slerp.h5"))
    tracking(os.path.join(run, "tracking", "lineage.h5"))
    os.makedirs(os.path.join(run, "tables"), exist_ok=True)
    weightspace(os.path.join(run, "tables", "weightspace.h5"))
    experiment(os.path.join(run, "experiment.h5"), run)


if __name__ == "__main__":
    main()
