"""Cross-check mergelens' safetensors files with the reference library.

check_export.py export TMP  -- load TMP/hf_{f32,f16,bf16} and TMP/sae, compare
                               with the HDF5 sources read by h5py
check_export.py write TMP   -- write TMP/py_hf (float16) with the library
check_export.py import TMP  -- compare TMP/py.h5 (imported by mergelens)
"""
import json
import struct
import sys

import h5py
import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file


def params(path):
    with h5py.File(path, "r") as f:
        return {k: f["params"][k][()] for k in f["params"]}, json.loads(f.attrs["model_config"])


def same_bits(a, b, what):
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    ua, ub = a.view(np.uint8), b.view(np.uint8)
    assert np.array_equal(ua, ub), f"{what}: values differ"


def bf16_reference(x):
    """Nearest bfloat16 bits of float32 x, ties to even, by comparing the two
    neighbouring candidates in float64 (finite inputs)."""
    lo = x.astype(np.float32).view(np.uint32) >> 16
    hi = lo + 1
    vlo = (lo << 16).astype(np.uint32).view(np.float32).astype(np.float64)
    vhi = (hi << 16).astype(np.uint32).view(np.float32).astype(np.float64)
    d_lo, d_hi = np.abs(x - vlo), np.abs(x - vhi)
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (lo % 2 == 1))
    return np.where(pick_hi, hi, lo).astype(np.uint16)


def raw_tensor(path, name):
    """Bytes of one tensor read by this script's own header parser."""
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    hdr = json.loads(blob[8:8 + n])
    b, e = hdr[name]["data_offsets"]
    return hdr[name], blob[8 + n + b:8 + n + e]


def check_export(tmp):
    ref, cfg = params(f"{tmp}/m.h5")
    for dt, torch_name in (("f32", "float32"), ("f16", "float16"), ("bf16", "bfloat16")):
        path = f"{tmp}/hf_{dt}/model.safetensors"
        with safe_open(path, "np") as f:  # the library validates the header
            assert set(f.keys()) == set(ref), f"{path}: tensor names differ"
            assert f.metadata()["format"] == "pt", f"{path}: metadata {f.metadata()}"
        with open(f"{tmp}/hf_{dt}/config.json") as f:
            c = json.load(f)
        assert c.pop("torch_dtype") == torch_name
        assert c == cfg, "config.json differs from model_config"
        if dt == "bf16":  # numpy has no bfloat16: parse the bytes here
            for k, v in ref.items():
                info, data = raw_tensor(path, k)
                assert info["dtype"] == "BF16" and info["shape"] == list(v.shape)
                same_bits(np.frombuffer(data, "<u2").reshape(v.shape), bf16_reference(v), k)
            print(f"{path}: {len(ref)} tensors match (bfloat16, checked against a float64 nearest-even reference)")
            continue
        t = load_file(path)
        for k, v in ref.items():
            want = v if dt == "f32" else v.astype(np.float16)  # numpy's own rounding
            assert t[k].dtype == want.dtype, f"{k}: dtype {t[k].dtype}"
            same_bits(t[k], want, k)
        print(f"{path}: {len(t)} tensors match ({torch_name})")
    with h5py.File(f"{tmp}/topk.h5", "r") as f:
        sae = {k: f[k][()] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    t = load_file(f"{tmp}/sae/sae_weights.safetensors")
    assert set(t) == set(sae)
    for k in sae:
        same_bits(t[k], sae[k], k)
    with open(f"{tmp}/sae/cfg.json") as f:
        c = json.load(f)
    want = {"architecture": "topk", "d_in": 16, "d_sae": 64, "dtype": "float32", "device": "cpu",
            "hook_name": "blocks.0.mlp.hook_post", "hook_layer": 0, "activation_fn_str": "topk",
            "activation_fn_kwargs": {"k": 5}, "normalize_activations": "none", "apply_b_dec_to_input": False,
            "model_name": "base", "context_size": 32}
    for k, v in want.items():
        assert c.get(k) == v, f"cfg.json {k}: {c.get(k)!r} != {v!r}"
    print("sae: weights and cfg.json match")


def write(tmp):
    import os
    ref, cfg = params(f"{tmp}/m.h5")
    os.makedirs(f"{tmp}/py_hf", exist_ok=True)
    save_file({k: v.astype(np.float16) for k, v in ref.items()}, f"{tmp}/py_hf/model.safetensors",
              metadata={"format": "pt"})
    with open(f"{tmp}/py_hf/config.json", "w") as f:
        json.dump(dict(cfg, torch_dtype="float16"), f)


def check_import(tmp):
    ref, cfg = params(f"{tmp}/m.h5")
    got, gcfg = params(f"{tmp}/py.h5")
    assert set(got) == set(ref)
    for k, v in ref.items():
        assert got[k].dtype == np.float32
        same_bits(got[k], v.astype(np.float16).astype(np.float32), k)
    assert gcfg == cfg, "imported model_config differs"
    print(f"py.h5: {len(got)} tensors written by safetensors {__import__('safetensors').__version__} imported exactly")


if __name__ == "__main__":
    {"export": check_export, "write": write, "import": check_import}[sys.argv[1]](sys.argv[2])
