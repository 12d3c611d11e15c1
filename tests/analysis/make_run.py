#!/usr/bin/env python3
"""Write a small synthetic mergelens RUN_DIR in the documented layouts (docs/FORMAT.md,
docs/modules/*.md) with h5py: tokenizer, token store, checkpoints with /train/log and /train/eval,
a merge with a mergelens.eval file, two SAE files with /metrics and /features, a sweep, a tracking
file and experiment.h5.  usage: make_run.py RUN_DIR"""
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
        f["train"].attrs["step"] = np.int64(steps)
        f["train/eval"].attrs["domains"] = json.dumps(list(domains))


def eval_file(path, model, domains=("lua", "stories")):
    with h5py.File(path, "w") as f:
        common(f, "mergelens.eval")
        f.attrs["model"] = model
        f.attrs["domains"] = json.dumps(list(domains))
        f["loss"] = np.array([2.4, 2.6])
        f["accuracy"] = np.array([0.33, 0.31])
        f["n_targets"] = np.array([1000, 1000], np.int64)


def sae(path, model, d_sae=24, d_in=8, K=4, Q=3, L=3, R=2, seed=0):
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
        for k, v in (("mse", 0.05), ("fvu", 0.3), ("l0", 12.5), ("dead_fraction", 1 / 12), ("dense_fraction", 0.0)):
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
        fe["top_rows"] = rng.integers(0, 1000, (d_sae, K)).astype(np.int64)
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
        f["grid"] = grid
        f["loss"] = np.stack([2.0 + grid, 3.0 - grid], axis=1)
        f["accuracy"] = np.stack([0.5 - 0.2 * grid, 0.3 + 0.2 * grid], axis=1)
        f["reference/loss"] = np.array([2.7, 2.9])
        f["reference/accuracy"] = np.array([0.35, 0.32])


def tracking(path, fp=24, fc=24, tau=0.8):
    rng = np.random.default_rng(3)
    with h5py.File(path, "w") as f:
        common(f, "mergelens.tracking")
        f.attrs["tau"] = tau
        f.attrs["status_codes"] = json.dumps({"1": "persist", "2": "disappear", "3": "emerge", "4": "dead"})
        names = ["base->lua"]
        allc = []
        for e in names:
            g = f.create_group("edges/" + e)
            g.attrs["parent"] = "base"
            g.attrs["child"] = "lua"
            g.attrs["measure"] = "activation"
            g.attrs["tau"] = tau
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
        for st, cmd in (("base", "train"), ("merge", "merge")):
            g = f.create_group("stages/" + st)
            g.attrs["command"] = cmd
            g.attrs["status"] = "done"
            g.attrs["seconds"] = 12.5
            g.attrs["argv"] = json.dumps([cmd, "--out", "models/%s.h5" % st])
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
    sae(os.path.join(run, "saes", "base.h5"), "models/base.h5", seed=0)
    sae(os.path.join(run, "saes", "lua.h5"), "models/lua.h5", seed=1)
    sweep(os.path.join(run, "sweeps", "slerp.h5"))
    tracking(os.path.join(run, "tracking", "lineage.h5"))
    os.makedirs(os.path.join(run, "tables"), exist_ok=True)
    weightspace(os.path.join(run, "tables", "weightspace.h5"))
    experiment(os.path.join(run, "experiment.h5"), run)


if __name__ == "__main__":
    main()
