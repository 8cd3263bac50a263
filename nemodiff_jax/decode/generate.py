"""The public generation API: one call, four modes from one checkpoint.

``generate(model, prompts, mode=...)`` validates the knobs on the host, pads and buckets
the prompts, and runs one jitted decode state machine (:mod:`nemodiff_jax.decode`).

What compiles: the config, the mode, the unmask policy, ``block_length`` and three bucketed
shapes (the batch, the prompt width: a power of two >= 16, and the output buffer: a power
of two >= 64 rounded up to a block multiple). ``max_new_tokens`` inside its bucket,
``threshold``, ``temperature``, ``top_k``, ``top_p``, ``seed``, ``gamma``, ``ar_mix_weight``, ``lora`` and
the thinking budget are traced, so changing them never recompiles (linear_spec's ``acceptance``
rule is static).

How NFE (forward passes, per row) is counted, following docs/ALGORITHMS.md, "Counting NFE and TPF":

* ``ar``: one per generated token; the prompt prefill is not counted (TPF = 1).
* ``diffusion``: one per denoising step plus one causal commit pass per decoded block
  (the final block's commit included); the prefill is not counted.
* ``linear_spec``: the prefill counts as 1 (it yields the first token), then one per draft
  pass and one per verify pass (docs/ALGORITHMS.md, "Linear self-speculation").
* ``quadratic_spec``: the first forward over ``[prompt, M x B]`` counts as 1, then one per
  cycle (docs/ALGORITHMS.md, "Quadratic self-speculation").

TPF = generated tokens (EOS included) / NFE, per row.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import unmask
from ..model import sharding
from ..model.forward import Model

MODES = ("ar", "diffusion", "linear_spec", "quadratic_spec")
PROMPT_BUCKET_MIN = 16
OUT_BUCKET_MIN = 64


@dataclasses.dataclass
class GenerateResult:
    """Per-row generated tokens (cut after the first EOS, EOS kept) and telemetry.

    ``stats`` holds the decode's statistics as numpy arrays (see the decode module of the
    mode; every mode has ``commit_pass``: the NFE index that produced each token).
    """

    tokens: list[list[int]]
    nfe: list[int]
    tpf: list[float]
    stats: dict[str, np.ndarray]
    wall_time: float
    mode: str
    texts: list[str] | None = None


def _pow2_at_least(n: int, floor: int) -> int:
    size = floor
    while size < n:
        size *= 2
    return size


def out_bucket(max_new_tokens: int, block_length: int = 1) -> int:
    """Static output buffer for ``max_new_tokens``: a power of two >= 64, rounded up to a block multiple."""
    size = _pow2_at_least(max_new_tokens, OUT_BUCKET_MIN)
    return -(-size // block_length) * block_length


def prompt_bucket(longest: int) -> int:
    return _pow2_at_least(longest, PROMPT_BUCKET_MIN)


def _as_id_lists(model: Model, prompts: Any) -> list[list[int]]:
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(prompts, (np.ndarray, jax.Array)):
        arr = np.asarray(prompts)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"prompts array must be integer [batch, length], got {arr.dtype} {arr.shape}")
        prompts = arr.tolist()
    if not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise ValueError("prompts must be a string, a list of token ids, or a non-empty list of either")
    if all(isinstance(t, (int, float, np.number, np.bool_)) for t in prompts):
        prompts = [prompts]
    rows = []
    for p in prompts:
        if isinstance(p, str):
            if model.tokenizer is None:
                raise ValueError("string prompts need a model with a tokenizer (model.tokenizer is None)")
            p = model.tokenizer.encode(p)
        if isinstance(p, (np.ndarray, jax.Array)):
            p = np.asarray(p).tolist() if np.issubdtype(np.asarray(p).dtype, np.integer) else list(np.asarray(p))
        bad_type = [t for t in p if isinstance(t, bool) or not isinstance(t, (int, np.integer))]
        if bad_type:
            raise ValueError(f"prompts: token ids must be integers, got {bad_type[0]!r} "
                             f"({type(bad_type[0]).__name__})")
        p = [int(t) for t in p]
        if not p:
            raise ValueError("prompts: every prompt must hold at least one token")
        bad = [t for t in p if not 0 <= t < model.config.vocab_size]
        if bad:
            raise ValueError(f"prompts: token ids {bad[:5]} outside the vocabulary [0, {model.config.vocab_size})")
        rows.append(p)
    return rows


POLICY_PARAMS = {
    "ar": (),
    "diffusion": ("gamma",),
    "linear_spec": ("acceptance",),
    "quadratic_spec": ("ar_mix_weight",),
}


def _cache_needed(mode: str, width: int, out_len: int, bl: int) -> int:
    if mode == "linear_spec":
        from .linear_spec import linear_cache_len

        return linear_cache_len(width, out_len, bl)
    if mode == "quadratic_spec":
        from .quadratic_spec import quadratic_cache_len

        return quadratic_cache_len(width, out_len, bl)
    return width + out_len + (bl if mode == "diffusion" else 0)


def _check_knobs(cfg, mode, max_new_tokens, block_length, threshold, temperature, top_k, top_p, policy,
                 max_thinking_tokens, end_think_token_id):
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if not isinstance(max_new_tokens, (int, np.integer)) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if not isinstance(block_length, (int, np.integer)) or isinstance(block_length, bool) or block_length < 1:
        raise ValueError(f"block_length must be a positive integer, got {block_length!r}")
    if mode == "diffusion" and max_new_tokens % block_length:
        raise ValueError(
            f"block_length ({block_length}) must divide max_new_tokens ({max_new_tokens}) in {mode} mode"
        )
    if threshold is not None and (_not_number(threshold) or not 0.0 <= float(threshold) <= 1.0):
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    if _not_number(temperature) or not 0 <= float(temperature) < float("inf"):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if mode == "quadratic_spec" and float(temperature) != 0:
        raise ValueError(f"temperature must be 0 in quadratic_spec mode (it is greedy), got {temperature}")
    if not isinstance(top_k, (int, np.integer)) or isinstance(top_k, bool) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    if _not_number(top_p) or not 0.0 < float(top_p) <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
    if mode == "diffusion":
        unmask.get(policy)
    if max_thinking_tokens is not None:
        if not isinstance(max_thinking_tokens, (int, np.integer)) or not 0 <= max_thinking_tokens < 2**31:
            raise ValueError(f"max_thinking_tokens must be an integer in [0, 2**31) or None, got {max_thinking_tokens!r}")
        if end_think_token_id is None:
            raise ValueError("end_think_token_id is required when max_thinking_tokens is set")
    if end_think_token_id is not None and (not isinstance(end_think_token_id, (int, np.integer))
                                           or not 0 <= end_think_token_id < cfg.vocab_size):
        raise ValueError(f"end_think_token_id {end_think_token_id} outside the vocabulary [0, {cfg.vocab_size})")


def _not_number(x) -> bool:
    """True for anything but a real int/float (bools and strings included)."""
    return isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating))


SEED_RANGE = (-(2**31), 2**64)


def _check_seed(x, what: str = "seed") -> int:
    if not isinstance(x, (int, np.integer)) or isinstance(x, bool):
        raise ValueError(f"{what} must be an int or a list of ints (one per prompt), got {x!r}")
    if not SEED_RANGE[0] <= int(x) < SEED_RANGE[1]:
        raise ValueError(f"{what} must lie in [-2**31, 2**64), got {x}")
    return int(x)


def _key64(seed: int):
    """A key per seed: ``key(seed)`` below 2**32 (as always), else ``key(low word)`` folded with
    the high word, so all 64 bits count (0, 2**32 and 2**40 give three different streams)."""
    if seed < 2**32:
        return jax.random.key(seed)
    return jax.random.fold_in(jax.random.key(seed & 0xFFFFFFFF), seed >> 32)


def _keys(seed, n: int):
    """A single key (int seed) or ``n`` row keys (one seed per prompt)."""
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return _key64(_check_seed(seed))
    seeds = list(seed) if isinstance(seed, (list, tuple, np.ndarray)) else None
    if seeds is None:
        raise ValueError(f"seed must be an int or a list of ints (one per prompt), got {seed!r}")
    seeds = [_check_seed(x, "seed: per-prompt seeds") for x in seeds]
    if len(seeds) != n:
        raise ValueError(f"seed: got {len(seeds)} seeds for {n} prompts; give one per prompt or a single int")
    if any(x < 0 for x in seeds):
        raise ValueError(f"seed: per-prompt seeds must be in [0, 2**64), got {seeds}")
    low = jax.vmap(jax.random.key)(jnp.asarray([x & 0xFFFFFFFF for x in seeds], jnp.uint32))
    high = np.asarray([x >> 32 for x in seeds], np.uint32)
    if not high.any():
        return low
    folded = jax.vmap(jax.random.fold_in)(low, jnp.asarray(high))
    data = jnp.where(jnp.asarray(high != 0)[:, None], jax.random.key_data(folded), jax.random.key_data(low))
    return jax.random.wrap_key_data(data)


@sharding.under_params_mesh
def generate(
    model: Model,
    prompts,
    mode: str = "ar",
    max_new_tokens: int = 128,
    block_length: int | None = None,
    threshold: float | None = None,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | Sequence[int] = 0,
    policy: str = "threshold",
    policy_params: dict | None = None,
    lora: bool | None = None,
    max_thinking_tokens: int | None = None,
    end_think_token_id: int | None = None,
    cache_len: int | None = None,
) -> GenerateResult:
    """Generate continuations of ``prompts`` (strings need ``model.tokenizer``; or lists of ids).

    ``threshold``: diffusion's confidence threshold (None = the quota schedule, docs/ALGORITHMS.md, "Unmasking policies")
    or linear speculation's draft threshold (None = 0: fill the block in one draft pass).
    ``policy``: the diffusion unmask policy (:mod:`nemodiff_jax.decode.unmask`); ``policy_params``:
    per-mode extras: diffusion ``gamma`` (``eb``, traced), linear_spec ``acceptance``
    (``"speculative"`` or ``"match"``, static), quadratic_spec ``ar_mix_weight`` (traced, < 0 = off).
    ``seed``: one int (row i samples with ``fold_in(key(seed), i)``) or one int per prompt (row i
    samples with ``key(seed[i])`` alone, so its tokens depend only on its prompt, its seed and
    the knobs, never on the other rows or its place in the batch).
    ``lora``: use the draft LoRA in the bidirectional passes (default: when the model has one;
    AR and quadratic_spec ignore it). ``cache_len``: static KV-cache slots (default and minimum: the prompt bucket
    + the output bucket + the mode's window slack).
    """
    cfg = model.config
    if block_length is None:
        block_length = cfg.block_size
    policy_params = dict(policy_params or {})
    for name in ("gamma", "ar_mix_weight"):
        if name in policy_params and (_not_number(policy_params[name]) or not np.isfinite(policy_params[name])):
            raise ValueError(f"policy_params[{name!r}] must be a finite number, got {policy_params[name]!r}")
    _check_knobs(cfg, mode, max_new_tokens, block_length, threshold, temperature, top_k, top_p, policy,
                 max_thinking_tokens, end_think_token_id)
    allowed = POLICY_PARAMS[mode]
    unknown = set(policy_params) - set(allowed)
    if unknown:
        raise ValueError(
            f"policy_params: unknown keys {sorted(unknown)} for mode {mode!r}; expected a subset of {allowed}"
        )
    acceptance = policy_params.get("acceptance", "speculative")
    if mode == "linear_spec" and acceptance not in ("speculative", "match"):
        raise ValueError(f"policy_params['acceptance'] must be 'speculative' or 'match', got {acceptance!r}")
    if lora is None:
        lora = model.has_lora
    if lora and not model.has_lora:
        raise ValueError("lora=True but the model has no draft LoRA (config.lora_rank == 0)")
    rows = _as_id_lists(model, prompts)

    bl = 1 if mode == "ar" else block_length
    out_len = out_bucket(max_new_tokens, bl)
    longest = max(len(r) for r in rows)
    width = prompt_bucket(longest)
    slack = {"ar": 0, "diffusion": bl, "linear_spec": bl, "quadratic_spec": bl * (bl + 1)}[mode]
    need = longest + max_new_tokens + slack
    if need > cfg.max_position_embeddings:
        raise ValueError(
            f"max_new_tokens: prompt ({longest}) + max_new_tokens ({max_new_tokens}) + slack ({slack}) "
            f"exceeds max_position_embeddings ({cfg.max_position_embeddings})"
        )
    # The state machines write whole windows at static offsets: the cache must hold the padded
    # prompt, the output buffer and the widest window past the end.
    required = _cache_needed(mode, width, out_len, bl)
    if cache_len is None:
        cache_len = required
    elif cache_len < required:
        raise ValueError(
            f"cache_len ({cache_len}) is too small for {mode}: prompt bucket {width} + output bucket {out_len} "
            f"+ window slack needs {required} (prompt {longest}, max_new_tokens {max_new_tokens})"
        )

    prompt = np.full((len(rows), width), cfg.pad_token_id, np.int32)
    for i, r in enumerate(rows):
        prompt[i, : len(r)] = r
    prompt, prompt_len = jnp.asarray(prompt), jnp.asarray([len(r) for r in rows], jnp.int32)
    key = _keys(seed, len(rows))
    mesh = sharding.mesh_of(model.params)  # sharded model: rows over "data" (issue 13)
    prompt, prompt_len, key = (sharding.place_rows(x, mesh) for x in (prompt, prompt_len, key))
    i32, f32 = jnp.int32, jnp.float32
    max_new = i32(max_new_tokens)
    think = i32(-1 if max_thinking_tokens is None else max_thinking_tokens)
    end_think = i32(-1 if end_think_token_id is None else end_think_token_id)
    temp, tk, tp = f32(temperature), i32(min(int(top_k), cfg.vocab_size)), f32(top_p)  # k >= V keeps all
    lora_s = f32(1.0 if lora else 0.0)

    t0 = time.perf_counter()
    if mode == "ar":
        from .ar import ar_decode

        out = ar_decode(model.params, cfg, prompt, prompt_len, key, max_new, temp, tk, tp, lora_s, think, end_think,
                        out_len=out_len, cache_len=cache_len)
    elif mode == "diffusion":
        from .diffusion import diffusion_decode

        name = "quota" if (policy == "threshold" and threshold is None) else policy
        out = diffusion_decode(
            model.params, cfg, prompt, prompt_len, key, max_new, temp, tk, tp,
            f32(0.0 if threshold is None else threshold), lora_s, think, end_think,
            f32(policy_params.get("gamma", 1.0)),
            block_length=bl, out_len=out_len, cache_len=cache_len, policy=name,
        )
    elif mode == "linear_spec":
        from .linear_spec import linear_spec_decode

        out = linear_spec_decode(
            model.params, cfg, prompt, prompt_len, key, max_new, temp, tk, tp,
            f32(0.0 if threshold is None else threshold), lora_s, think, end_think,
            block_length=bl, out_len=out_len, cache_len=cache_len, acceptance=acceptance,
        )
    else:
        from .quadratic_spec import quadratic_spec_decode

        out = quadratic_spec_decode(
            model.params, cfg, prompt, prompt_len, key, max_new, think, end_think,
            f32(policy_params.get("ar_mix_weight", -1.0)), block_length=bl, out_len=out_len, cache_len=cache_len,
        )
    out = jax.block_until_ready(sharding.replicated(out, mesh))
    wall = time.perf_counter() - t0

    tokens_np, num, nfe = np.asarray(out.tokens), np.asarray(out.num_tokens), np.asarray(out.nfe)
    tokens = [tokens_np[i, : int(num[i])].tolist() for i in range(len(rows))]
    nfe_l = [int(x) for x in nfe]
    tpf = [len(t) / n if n > 0 else 0.0 for t, n in zip(tokens, nfe_l)]
    texts = [model.tokenizer.decode(t) for t in tokens] if model.tokenizer is not None else None
    stats = {k: np.asarray(v) for k, v in out.stats.items()}
    return GenerateResult(tokens, nfe_l, tpf, stats, wall, mode, texts)
