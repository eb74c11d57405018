#!/usr/bin/env python3
"""Generates tests/fixtures/quant_blocks.json: dequantisation oracles from PyPI `gguf`.

flashmem's scalar dequantisers (dequantize_row_ref) are checked bit for bit against the
numpy implementations in gguf-py (gguf.quants.dequantize), which are independent of ggml's C
code. The fixture holds:

  blocks: for each supported type a few blocks of seeded random bytes (with finite, sane f16
          scales so the expected values are ordinary numbers) and gguf-py's dequantisation.
  model:  a few rows of tensors of the default model (SmolLM2-135M-Instruct Q4_1, fetched by
          scripts/fetch-model.sh) and gguf-py's dequantisation of them, so the test can check
          the real file without running Python.

All floats are stored as hex of their little-endian f32 bytes, so the comparison is exact.

Usage: python3 scripts/reference/make_quant_fixture.py [--model PATH] [--out PATH]
Needs: pip install gguf numpy  (written against gguf 0.19.0)
"""
import argparse
import hashlib
import json
import os
import sys

import numpy as np

import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_MODEL = os.path.join(os.path.expanduser("~"), ".cache", "flashmem", "models",
                             "SmolLM2-135M-Instruct.Q4_1.gguf")

# type -> (elements per block, bytes per block, byte offsets of f16 scales in a block)
LAYOUTS = {
    T.F32: (1, 4, []),
    T.F16: (1, 2, []),
    T.BF16: (1, 2, []),
    T.Q8_0: (32, 34, [0]),
    T.Q4_0: (32, 18, [0]),
    T.Q4_1: (32, 20, [0, 2]),
    T.Q4_K: (256, 144, [0, 2]),
    T.Q6_K: (256, 210, [208]),
    T.Q5_0: (32, 22, [0]),
}


def random_f16(rng, n, lo_exp=-12, hi_exp=2):
    """Finite, normal f16 values of either sign with magnitudes in [2^lo_exp, 2^hi_exp)."""
    mag = np.exp2(rng.uniform(lo_exp, hi_exp, size=n)).astype(np.float16)
    sign = np.where(rng.integers(0, 2, size=n) == 1, -1, 1).astype(np.float16)
    return (mag * sign).astype(np.float16)


def make_blocks(rng, qtype, n_blocks):
    elems, size, scale_offsets = LAYOUTS[qtype]
    if qtype == T.F32:
        vals = rng.standard_normal(n_blocks * 8).astype(np.float32) * 3
        specials = np.array([0.0, -0.0, np.inf, -np.inf, 1e-40, -3.4e38, 1.0, 0.5], np.float32)
        return np.concatenate([vals, specials]).view(np.uint8)
    if qtype == T.F16:
        # Every class of half: random finite values, subnormals, zeros, infinities, extremes.
        vals = random_f16(rng, n_blocks * 8, -20, 15).view(np.uint16)
        specials = np.array([0x0000, 0x8000, 0x0001, 0x03FF, 0x8200, 0x0400, 0x7BFF, 0xFBFF,
                             0x7C00, 0xFC00, 0x3C00, 0x3555], np.uint16)
        return np.concatenate([vals, specials]).view(np.uint8)
    if qtype == T.BF16:
        vals = (rng.standard_normal(n_blocks * 8).astype(np.float32) * 7).view(np.uint32)
        bf = (vals >> 16).astype(np.uint16)
        specials = np.array([0x0000, 0x8000, 0x0001, 0x7F80, 0xFF80, 0x7F7F, 0x3F80], np.uint16)
        return np.concatenate([bf, specials]).view(np.uint8)
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for off in scale_offsets:
        raw[:, off:off + 2] = random_f16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(-1)


def hexf32(arr):
    return np.ascontiguousarray(arr, dtype=np.float32).tobytes().hex()


def block_fixtures(seed):
    rng = np.random.default_rng(seed)
    out = []
    for qtype in LAYOUTS:
        for n_blocks in (1, 3):
            raw = make_blocks(rng, qtype, n_blocks)
            elems, size, _ = LAYOUTS[qtype]
            n = raw.size // size * elems
            expected = dequantize(raw, qtype).reshape(-1)
            assert expected.size == n, (qtype.name, expected.size, n)
            assert np.all(np.isfinite(expected) | np.isinf(expected))  # no NaN by construction
            out.append({"type": qtype.name, "type_id": int(qtype), "n": int(n),
                        "raw": raw.tobytes().hex(), "expected_f32": hexf32(expected)})
    return out


def model_fixtures(path):
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    picks = [("blk.0.attn_q.weight", [0, 1, 575]),
             ("blk.29.ffn_down.weight", [0, 300]),
             ("token_embd.weight", [0, 49151])]
    rows = []
    for name, row_ids in picks:
        t = tensors[name]
        qtype = T(t.tensor_type)
        data = np.asarray(t.data)  # shape (rows, row_bytes) for quantised, (rows, ne0) for float
        for r in row_ids:
            row = data[r].reshape(-1)
            if qtype not in (T.F32, T.F16):
                row = row.view(np.uint8)
            expected = dequantize(row, qtype).reshape(-1)
            rows.append({"tensor": name, "type": qtype.name, "row": r, "n": int(expected.size),
                         "expected_f32": hexf32(expected)})
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    return {"file": os.path.basename(path), "sha256": sha.hexdigest(), "rows": rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.environ.get("FLASHMEM_MODEL", DEFAULT_MODEL))
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "quant_blocks.json"))
    ap.add_argument("--seed", type=int, default=20240607)
    args = ap.parse_args()
    if not os.path.exists(args.model):
        sys.exit(f"model not found at {args.model}; run scripts/fetch-model.sh first")
    fixture = {
        "generator": "scripts/reference/make_quant_fixture.py",
        "gguf_py_version": getattr(gguf, "__version__", None) or _dist_version(),
        "numpy_version": np.__version__,
        "blocks": block_fixtures(args.seed),
        "model": model_fixtures(args.model),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(fixture, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")


def _dist_version():
    try:
        from importlib.metadata import version
        return version("gguf")
    except Exception:  # noqa: BLE001 — informational only
        return "unknown"


if __name__ == "__main__":
    main()
