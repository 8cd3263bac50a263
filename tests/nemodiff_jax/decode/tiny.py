"""Shared helpers for decoding tests: a tiny fp32 random model with peaked logits, and oracles
that recompute logits from the explicit token sequence without the KV cache."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import nemodiff_jax as nd
from nemodiff_jax.model import masks

TINY = nd.NLDConfig.preset("tiny").replace(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=2,
    num_kv_heads=1,
    head_dim=16,
    max_position_embeddings=512,
    rope_theta=100.0,  # strong positional signal, so masked positions of a block differ
    block_size=4,
)


@functools.lru_cache(maxsize=None)
def tiny_model(seed: int = 0, scale: float = 10.0, head_scale: float = 20.0, lora_rank: int = 0) -> nd.Model:
    """Random params scaled up so attention and MLP matter (init std 0.02 leaves the residual
    stream a copy of the token embedding): argmaxes are clear, confidences spread, and masked
    positions of a block disagree."""
    cfg = TINY.replace(lora_rank=lora_rank, lora_alpha=float(lora_rank))
    base = nd.init_params(cfg, seed)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x if "norm" in jax.tree_util.keystr(path) else x * scale, base
    )
    params = dict(params)
    params["diffusion_head"] = base["diffusion_head"] * head_scale
    return nd.Model(cfg, params)


def relabel(model: nd.Model, a: int, b: int) -> nd.Model:
    """The same network with token ids ``a`` and ``b`` swapped (embedding rows, head columns).

    Tests use it to make a token the model already emits become the EOS without changing
    the config (which is static and would recompile)."""
    params = dict(model.params)
    perm = np.arange(model.config.vocab_size)
    perm[[a, b]] = perm[[b, a]]
    params["embed_tokens"] = params["embed_tokens"][perm]
    params["diffusion_head"] = params["diffusion_head"][:, perm]
    return model.replace(params=params)


def swap_ids(rows, a: int, b: int):
    table = {a: b, b: a}
    return [[table.get(int(t), int(t)) for t in r] for r in rows]


def prompts(lengths, seed: int = 0, vocab: int = 64, avoid=(0, 1, 2, 3)):
    rng = np.random.default_rng(seed)
    ok = np.array([t for t in range(vocab) if t not in avoid])
    return [list(rng.choice(ok, size=n)) for n in lengths]


def pad(rows, pad_id: int = 0, width: int | None = None):
    width = width or max(len(r) for r in rows)
    width = -(-width // 16) * 16
    arr = np.full((len(rows), width), pad_id, np.int32)
    for i, r in enumerate(rows):
        arr[i, : len(r)] = r
    return jnp.asarray(arr), jnp.asarray([len(r) for r in rows], jnp.int32)


ORACLE_WIDTH = 64


def seq_logits(model: nd.Model, seq, bidir_from: int | None = None, lora: float = 0.0) -> np.ndarray:
    """Logits [L, V] of one explicit sequence, no cache: causal, or causal up to ``bidir_from``
    and bidirectional from there to the end (a diffusion peek over a causal prefix).

    The sequence is right-padded to a fixed width (hidden by ``window_len``) so one compile
    serves every call."""
    n = len(seq)
    assert n <= ORACLE_WIDTH
    ids = jnp.asarray([list(seq) + [0] * (ORACLE_WIDTH - n)], jnp.int32)
    zero = jnp.zeros((1,), jnp.int32)
    start = n if bidir_from is None else bidir_from
    policy = masks.mixed(zero, jnp.asarray([start], jnp.int32), jnp.asarray([n], jnp.int32), 1)
    pos = jnp.arange(ORACLE_WIDTH, dtype=jnp.int32)[None]
    logits, _ = nd.forward(model.params, model.config, ids, pos, policy, None, jnp.float32(lora))
    return np.array(logits[0, :n])


def greedy_np(logits: np.ndarray, mask_id: int) -> np.ndarray:
    x = np.array(logits, np.float64)
    x[..., mask_id] = -np.inf
    return x.argmax(-1)


def softmax_np(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def ar_oracle(model: nd.Model, prompt, max_new: int, eos: int | None = None):
    """Greedy AR by recomputing the whole sequence each step (no cache)."""
    seq, out = list(prompt), []
    for _ in range(max_new):
        tok = int(greedy_np(seq_logits(model, seq)[-1], model.config.mask_token_id))
        out.append(tok)
        seq.append(tok)
        if tok == eos:
            break
    return out
