#!/usr/bin/env python3
"""Float64 reference forward pass for Llama-family GGUF models (llama, qwen2).

This is an *oracle*: a deliberately plain numpy implementation, written for
reading rather than speed, against which flashmem's logits are compared.

  * Weights are dequantised with the PyPI `gguf` package
    (gguf.quants.dequantize, float32 result) and then widened to float64.
    Everything after that -- activations, attention, the KV cache, softmax,
    norms, RoPE angles -- is float64.
  * Hyper-parameters come from the GGUF metadata (`<arch>.*` keys).
  * Architecture: pre-norm decoder, RMSNorm, full causal self-attention with
    grouped-query attention (GQA), RoPE, SwiGLU feed-forward, final RMSNorm,
    output projection (`output.weight`, or `token_embd.weight` when tied).

RoPE convention.  llama.cpp applies LLAMA_ROPE_TYPE_NORM to LLM_ARCH_LLAMA
(src/llama-model.cpp, llama_model_rope_type): within each head, dimensions
(2i, 2i+1) form one rotated pair with angle pos * base^(-2i/head_dim).  This is
correct for GGUF files because convert_hf_to_gguf permutes the rows of
attn_q / attn_k (LlamaModel.permute) so that HF's "rotate_half" pairs
(i, i + head_dim/2) become adjacent.  So: adjacent pairs here, *not* NeoX.

Usage examples:

  # last-position logits of a token list, stored as little-endian float32
  forward_f64.py -m model.gguf --tokens-file tests/fixtures/logits/prose.json \
      --logits-out /tmp/prose.f64.bin

  # plus a greedy continuation of 64 tokens (no stop on EOS)
  forward_f64.py -m model.gguf --tokens 1,9690,198 --greedy 64

A JSON summary (token count, top-5 logits, greedy ids) is printed to stdout.
BLAS threads follow the usual OPENBLAS_NUM_THREADS / OMP_NUM_THREADS.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

import numpy as np
import gguf
from gguf.quants import dequantize


# ----------------------------------------------------------------------------
# Model loading
# ----------------------------------------------------------------------------

@dataclass
class HParams:
    n_layer: int
    d_model: int
    n_head: int
    n_head_kv: int
    head_dim: int
    d_ff: int
    n_vocab: int
    rms_eps: float
    rope_base: float
    n_ctx_train: int
    arch: str = "llama"


def _field(reader: gguf.GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        if default is None:
            raise KeyError(f"GGUF metadata key missing: {key}")
        return default
    return f.contents()


def read_hparams(reader: gguf.GGUFReader) -> HParams:
    arch = _field(reader, "general.architecture")
    if arch not in ("llama", "qwen2"):
        raise ValueError(f"only the llama and qwen2 architectures are implemented, got {arch!r}")

    def key(name: str) -> str:
        return f"{arch}.{name}"

    # This oracle implements plain RoPE only; refuse files asking for scaling.
    for k in ("rope.scaling.type", "rope.scaling.factor", "rope.freq_scale"):
        if key(k) in reader.fields:
            raise ValueError(f"RoPE scaling ({key(k)}) is not implemented")

    d_model = int(_field(reader, key("embedding_length")))
    n_head = int(_field(reader, key("attention.head_count")))
    n_head_kv = int(_field(reader, key("attention.head_count_kv"), n_head))
    head_dim = int(_field(reader, key("attention.key_length"), d_model // n_head))
    n_rot = int(_field(reader, key("rope.dimension_count"), head_dim))
    if n_rot != head_dim:
        raise ValueError("partial RoPE (rope.dimension_count != head_dim) is not implemented")
    n_vocab = int(_field(reader, key("vocab_size"),
                         len(reader.fields["tokenizer.ggml.tokens"].data)))

    return HParams(
        n_layer=int(_field(reader, key("block_count"))),
        d_model=d_model,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        d_ff=int(_field(reader, key("feed_forward_length"))),
        n_vocab=n_vocab,
        # The value is stored as float32 in the file; use exactly that value.
        rms_eps=float(_field(reader, key("attention.layer_norm_rms_epsilon"))),
        rope_base=float(_field(reader, key("rope.freq_base"), 10000.0)),
        n_ctx_train=int(_field(reader, key("context_length"))),
        arch=arch,
    )


def load_weights(reader: gguf.GGUFReader) -> dict[str, np.ndarray]:
    """All tensors, dequantised, as float64.

    numpy shapes are the reverse of the GGML shapes, so a GGML matrix with
    ne = [n_in, n_out] becomes an (n_out, n_in) array and y = x @ W.T.
    """
    weights = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type)
        expected = tuple(int(n) for n in reversed(t.shape))
        weights[t.name] = np.asarray(w, dtype=np.float64).reshape(expected)
    return weights


# ----------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------

def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * weight, over the last axis."""
    mean_sq = np.mean(x * x, axis=-1, keepdims=True)
    return x / np.sqrt(mean_sq + eps) * weight


def rope(x: np.ndarray, positions: np.ndarray, base: float) -> np.ndarray:
    """Rotate adjacent pairs (2i, 2i+1) of every head ("normal" / GPT-J RoPE).

    x: (n_tokens, n_heads, head_dim); positions: (n_tokens,) integers.
    """
    head_dim = x.shape[-1]
    i = np.arange(head_dim // 2, dtype=np.float64)
    inv_freq = base ** (-2.0 * i / head_dim)                    # (head_dim/2,)
    angle = positions.astype(np.float64)[:, None] * inv_freq    # (n, head_dim/2)
    cos = np.cos(angle)[:, None, :]                             # broadcast over heads
    sin = np.sin(angle)[:, None, :]

    x_even = x[..., 0::2]
    x_odd = x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x_even * cos - x_odd * sin
    out[..., 1::2] = x_even * sin + x_odd * cos
    return out


def rope_neox(x: np.ndarray, positions: np.ndarray, base: float) -> np.ndarray:
    """Rotate the pairs (i, i + head_dim/2) of every head (NeoX / HF "rotate_half" RoPE).

    llama.cpp uses this for LLM_ARCH_QWEN2 (LLAMA_ROPE_TYPE_NEOX in llama_model_rope_type),
    whose GGUF converter keeps the checkpoint's row order.
    """
    head_dim = x.shape[-1]
    half = head_dim // 2
    i = np.arange(half, dtype=np.float64)
    inv_freq = base ** (-2.0 * i / head_dim)
    angle = positions.astype(np.float64)[:, None] * inv_freq
    cos = np.cos(angle)[:, None, :]
    sin = np.sin(angle)[:, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


# ----------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------

class KVCache:
    """Keys (after RoPE) and values of every processed position, per layer."""

    def __init__(self, n_layer: int):
        self.k: list[np.ndarray | None] = [None] * n_layer   # (n_past, n_head_kv, head_dim)
        self.v: list[np.ndarray | None] = [None] * n_layer
        self.n_past = 0

    def append(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.k[layer] is None:
            self.k[layer], self.v[layer] = k, v
        else:
            self.k[layer] = np.concatenate([self.k[layer], k], axis=0)
            self.v[layer] = np.concatenate([self.v[layer], v], axis=0)
        return self.k[layer], self.v[layer]


class LlamaF64:
    def __init__(self, path: str):
        reader = gguf.GGUFReader(path)
        self.hp = read_hparams(reader)
        self.w = load_weights(reader)
        # Tied embeddings: without output.weight the output projection is the
        # token embedding matrix.
        self.output_weight = self.w.get("output.weight", self.w["token_embd.weight"])
        assert self.output_weight.shape == (self.hp.n_vocab, self.hp.d_model)

    def attention(self, layer: int, x: np.ndarray, positions: np.ndarray,
                  cache: KVCache) -> np.ndarray:
        hp, w = self.hp, self.w
        p = f"blk.{layer}."
        n = x.shape[0]

        q = x @ w[p + "attn_q.weight"].T
        k = x @ w[p + "attn_k.weight"].T
        v = x @ w[p + "attn_v.weight"].T
        if hp.arch == "qwen2":   # Q/K/V biases
            q, k, v = q + w[p + "attn_q.bias"], k + w[p + "attn_k.bias"], v + w[p + "attn_v.bias"]
        q = q.reshape(n, hp.n_head, hp.head_dim)
        k = k.reshape(n, hp.n_head_kv, hp.head_dim)
        v = v.reshape(n, hp.n_head_kv, hp.head_dim)
        rot = rope_neox if hp.arch == "qwen2" else rope
        q = rot(q, positions, hp.rope_base)
        k = rot(k, positions, hp.rope_base)

        k_all, v_all = cache.append(layer, k, v)       # (n_kv_pos, n_head_kv, head_dim)
        key_positions = np.arange(k_all.shape[0])

        # Causal mask: the query at position p sees keys at positions <= p.
        mask = key_positions[None, :] > positions[:, None]   # (n, n_kv_pos)

        group = hp.n_head // hp.n_head_kv   # query heads sharing one KV head
        scale = 1.0 / np.sqrt(hp.head_dim)
        out = np.empty((n, hp.n_head, hp.head_dim))
        for h in range(hp.n_head):
            kv = h // group
            scores = (q[:, h, :] @ k_all[:, kv, :].T) * scale  # (n, n_kv_pos)
            scores = np.where(mask, -np.inf, scores)
            out[:, h, :] = softmax(scores, axis=-1) @ v_all[:, kv, :]

        return out.reshape(n, hp.n_head * hp.head_dim) @ w[p + "attn_output.weight"].T

    def feed_forward(self, layer: int, x: np.ndarray) -> np.ndarray:
        w = self.w
        p = f"blk.{layer}."
        gate = x @ w[p + "ffn_gate.weight"].T
        up = x @ w[p + "ffn_up.weight"].T
        return (silu(gate) * up) @ w[p + "ffn_down.weight"].T

    def forward(self, tokens: list[int], cache: KVCache) -> np.ndarray:
        """Run `tokens` after the cache's contents; return the logits (float64)
        of the last of them."""
        hp, w = self.hp, self.w
        positions = np.arange(cache.n_past, cache.n_past + len(tokens))
        if positions[-1] >= hp.n_ctx_train:
            print(f"warning: position {positions[-1]} beyond the training context "
                  f"{hp.n_ctx_train}", file=sys.stderr)

        x = w["token_embd.weight"][np.asarray(tokens)]          # (n, d_model)
        for layer in range(hp.n_layer):
            p = f"blk.{layer}."
            x = x + self.attention(layer, rms_norm(x, w[p + "attn_norm.weight"], hp.rms_eps),
                                   positions, cache)
            x = x + self.feed_forward(layer, rms_norm(x, w[p + "ffn_norm.weight"], hp.rms_eps))
        cache.n_past += len(tokens)

        last = rms_norm(x[-1], w["output_norm.weight"], hp.rms_eps)
        return self.output_weight @ last                          # (n_vocab,)

    def greedy(self, prompt: list[int], n_new: int) -> tuple[np.ndarray, list[int]]:
        """Last-position logits of the prompt, and `n_new` argmax tokens after it
        (generation does not stop at end-of-sequence tokens)."""
        cache = KVCache(self.hp.n_layer)
        prompt_logits = self.forward(prompt, cache)
        logits = prompt_logits
        generated = []
        for _ in range(n_new):
            token = int(np.argmax(logits))   # first index on ties
            generated.append(token)
            if len(generated) < n_new:
                logits = self.forward([token], cache)
        return prompt_logits, generated


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------

def read_tokens(args) -> list[int]:
    if args.tokens is not None:
        return [int(t) for t in args.tokens.replace(" ", "").split(",") if t]
    with open(args.tokens_file) as f:
        data = json.load(f)
    return list(data["tokens"] if isinstance(data, dict) else data)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", required=True, help="GGUF file (llama architecture)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--tokens", help="comma-separated token ids")
    src.add_argument("--tokens-file",
                     help='JSON file: a list of ids, or an object with a "tokens" list')
    ap.add_argument("--logits-out",
                    help="write the last-position logits here as little-endian float32")
    ap.add_argument("--greedy", type=int, default=0, metavar="N",
                    help="also produce N greedy (argmax) continuation tokens")
    args = ap.parse_args()

    tokens = read_tokens(args)
    if not tokens:
        ap.error("no tokens")

    model = LlamaF64(args.model)
    if max(tokens) >= model.hp.n_vocab or min(tokens) < 0:
        ap.error("token id out of range")

    logits, generated = model.greedy(tokens, args.greedy)

    if args.logits_out:
        logits.astype("<f4").tofile(args.logits_out)

    top = np.argsort(-logits, kind="stable")[:5]
    summary = {
        "n_tokens": len(tokens),
        "hparams": vars(model.hp),
        "top5": [[int(i), float(logits[i])] for i in top],
        "greedy": generated,
    }
    json.dump(summary, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
