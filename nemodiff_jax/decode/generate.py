"""The public generation API: one call, four modes from one checkpoint.

``generate(model, prompts, *, mode=...)`` validates the knobs on the host, pads and buckets
the prompts, and runs the jitted decode engine (:mod:`nemodiff_jax.decode.engine`): every
prompt goes through ``batch_size`` slots (default: all at once), a slot taking the next waiting
prompt when its row ends. ``stream(model, prompts, *, every=K, ...)`` runs the same engine K
rounds at a time and yields what is decided so far.

What compiles: the config, the mode, the unmask policy, ``block_length``, linear_spec's
``acceptance`` rule, the number of prompts and of slots, and two bucketed shapes (the prompt
width: a power of two >= 16, and the output buffer: a power of two >= 64 rounded up to a block
multiple). ``max_new_tokens`` inside its bucket, ``threshold``, ``temperature``, ``top_k``,
``top_p``, ``seed``, ``gamma``, ``ar_mix_weight``, ``lora`` and the thinking budget are traced
per row, so changing them (or giving each prompt its own) never recompiles.

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
import warnings
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import sampling, unmask
from ..model import sharding
from ..model.forward import Model
from .knobs import Knobs, LoopSpec, cache_needed

from .knobs import MODES  # noqa: E402
PROMPT_BUCKET_MIN = 16
DIFFUSION_THRESHOLD = 0.9  # official chat default and SGLang FastDiffuser: threshold 0.9 at block 32
OUT_BUCKET_MIN = 64


@dataclasses.dataclass
class GenerateResult:
    """Per-row generated tokens (cut after the first EOS, EOS kept) and telemetry.

    ``stats`` holds the decode's statistics as numpy arrays (see the decode module of the
    mode; every mode has ``commit_pass``: the NFE index that produced each token, and
    ``nonfinite``: bool per prompt, True where the row stopped because its logits turned NaN/Inf;
    such a row's tokens end before the bad step, and generate warns).
    ``wall_time`` is the decode alone; ``compile_time`` the ahead-of-time compilation before it
    (0 when the program for these shapes was already compiled), so tokens / wall_time is throughput.
    """

    tokens: list[list[int]]
    nfe: list[int]
    tpf: list[float]
    stats: dict[str, np.ndarray]
    wall_time: float
    mode: str
    texts: list[str] | None = None
    compile_time: float = 0.0  # seconds compiling before the decode (0: the program was cached); never in wall_time


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
            p = model.tokenizer.encode_prompt(p)  # BOS first: nemodiff_jax.io.tokenizer.encode_prompt
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
PER_ROW = ("threshold", "temperature", "top_k", "top_p")


def _per_row(name: str, value, n: int) -> list:
    """A knob as ``n`` values: a scalar for every prompt, or one value per prompt."""
    if isinstance(value, (list, tuple, np.ndarray)):
        vals = list(value)
        if len(vals) != n:
            raise ValueError(f"{name}: got {len(vals)} values for {n} prompts; give one per prompt or a scalar")
        return vals
    return [value] * n


def check_sampling(rows: dict) -> None:
    """The per-row sampling knobs (``rows["temperature"|"top_k"|"top_p"]``, lists), one error each."""
    for temperature in rows["temperature"]:
        if _not_number(temperature) or not 0 <= float(temperature) < float("inf"):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    for top_k in rows["top_k"]:
        if not isinstance(top_k, (int, np.integer)) or isinstance(top_k, bool) or top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    for top_p in rows["top_p"]:
        if _not_number(top_p) or not 0.0 < float(top_p) <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1], got {top_p}")


def _check_knobs(cfg, mode, max_new_tokens, block_length, policy, max_thinking_tokens, end_think_token_id, rows):
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
    if len({t is None for t in rows["threshold"]}) > 1:
        raise ValueError("threshold: None (the quota schedule) cannot be mixed with per-prompt values")
    for threshold in rows["threshold"]:
        if threshold is not None and (_not_number(threshold) or not 0.0 <= float(threshold) <= 1.0):
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    check_sampling(rows)
    for temperature in rows["temperature"]:
        if mode == "quadratic_spec" and float(temperature) != 0:
            raise ValueError(f"temperature must be 0 in quadratic_spec mode (it is greedy), got {temperature}")
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


def _seed_rows(seed, n: int) -> np.ndarray | None:
    """The row keys as int ``[n, 2]`` rows ``(seed, i)`` / ``(seed_i, -1)`` that the engine turns
    into typed keys inside its jit (:func:`~.engine.row_keys`): the same keys as :func:`_keys`
    without its eager host-side dispatches (about 3 ms a call, most of a short call's host time).
    None where a seed is negative or needs more than 32 bits (then :func:`_keys` builds them)."""
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        s = _check_seed(seed)
        if not 0 <= s < 2**32:
            return None
        rows = np.stack([np.full(n, s, np.uint32), np.arange(n, dtype=np.uint32)], axis=1)
        return rows.view(np.int32)
    if isinstance(seed, (list, tuple, np.ndarray)) and len(seed) == n:
        seeds = [_check_seed(x, "seed: per-prompt seeds") for x in seed]
        if all(0 <= x < 2**32 for x in seeds):
            rows = np.stack([np.asarray(seeds, np.uint32), np.full(n, 2**32 - 1, np.uint32)], axis=1)
            return rows.view(np.int32)  # second column -1: no fold_in
    return None


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A validated call: the static loop spec, the device-side queue, the prompts as lists."""

    spec: LoopSpec
    queue: Any
    rows: list
    mesh: Any = None


def prepare(model: Model, prompts, *, mode: str = "ar", max_new_tokens: int = 128, block_length: int | None = None,
            threshold=None, temperature=0.0, top_k=0, top_p=1.0, seed=0, policy: str = "threshold",
            policy_params: dict | None = None, lora: bool | None = None, max_thinking_tokens: int | None = None,
            end_think_token_id: int | None = None, cache_len: int | None = None,
            batch_size: int | None = None) -> Prepared:
    """Validate the knobs (errors name the knob), pad and bucket the prompts, build the spec and
    the queue of per-prompt keys and knobs. :func:`generate` documents the arguments."""
    from .engine import Queue

    cfg = model.config
    if block_length is None:
        block_length = cfg.block_size
    policy_params = dict(policy_params or {})
    for name in ("gamma", "ar_mix_weight"):
        given = policy_params.get(name, 0.0)
        for v in (list(given) if isinstance(given, (list, tuple, np.ndarray)) else [given]):
            if _not_number(v) or not np.isfinite(v):
                raise ValueError(f"policy_params[{name!r}] must be a finite number, got {v!r}")
    rows = _as_id_lists(model, prompts)
    n = len(rows)
    per = {k: _per_row(k, v, n) for k, v in
           dict(threshold=threshold, temperature=temperature, top_k=top_k, top_p=top_p).items()}
    _check_knobs(cfg, mode, max_new_tokens, block_length, policy, max_thinking_tokens, end_think_token_id, per)
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
    if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")

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
    # The rounds write whole windows at static offsets: the cache must hold the padded
    # prompt, the output buffer and the widest window past the end.
    required = cache_needed(mode, width, out_len, bl)
    if cache_len is None:
        cache_len = required
    elif cache_len < required:
        raise ValueError(
            f"cache_len ({cache_len}) is too small for {mode}: prompt bucket {width} + output bucket {out_len} "
            f"+ window slack needs {required} (prompt {longest}, max_new_tokens {max_new_tokens})"
        )
    if mode == "diffusion":  # the released model's default: threshold 0.9 (docs/ALGORITHMS.md, "Default knobs")
        per["threshold"] = [DIFFUSION_THRESHOLD if t is None else t for t in per["threshold"]]
    name = policy
    spec = LoopSpec(mode=mode, block_length=bl, out_len=out_len, cache_len=cache_len, prompt_width=width,
                    acceptance=acceptance if mode == "linear_spec" else "speculative",
                    policy=name if mode == "diffusion" else "threshold", slots=min(batch_size or n, n))
    knobs = Knobs.make(
        n, max_new_tokens=max_new_tokens, temperature=np.asarray(per["temperature"], np.float32),
        top_k=np.minimum(np.asarray(per["top_k"], np.int64), cfg.vocab_size).astype(np.int32), top_p=np.asarray(per["top_p"], np.float32),
        threshold=np.asarray([0.0 if t is None else t for t in per["threshold"]], np.float32),
        gamma=np.asarray(_per_row("gamma", policy_params.get("gamma", 1.0), n), np.float32),
        lora=1.0 if lora else 0.0,
        max_thinking_tokens=-1 if max_thinking_tokens is None else max_thinking_tokens,
        end_think_id=-1 if end_think_token_id is None else end_think_token_id,
        ar_mix_weight=float(policy_params.get("ar_mix_weight", -1.0)),
    ).clipped(out_len)
    prompt = np.full((n, width), cfg.pad_token_id, np.int32)
    for i, r in enumerate(rows):
        prompt[i, : len(r)] = r
    key = _seed_rows(seed, n)
    if key is None:  # 64-bit or negative seeds: typed keys built here
        key = _keys(seed, n)
        if key.shape == ():  # one int seed: prompt i folds in i
            key = sampling.row_keys(key, n)
    mesh = sharding.mesh_of(model.params)  # sharded model: rows over "data" (issue 13)
    prompt, prompt_len, key = (sharding.place_rows(x, mesh) for x in
                               (prompt, np.asarray([len(r) for r in rows], np.int32), key))
    queue = Queue(prompt=prompt, prompt_len=prompt_len, keys=key, knobs=knobs)
    return Prepared(spec, queue, rows, mesh)


def _result(model: Model, rows, out, wall: float, mode: str) -> GenerateResult:
    tokens_np, num, nfe = np.asarray(out.tokens), np.asarray(out.num_tokens), np.asarray(out.nfe)
    tokens = [tokens_np[i, : int(num[i])].tolist() for i in range(len(rows))]
    nfe_l = [int(x) for x in nfe]
    tpf = [len(t) / n if n > 0 else 0.0 for t, n in zip(tokens, nfe_l)]
    texts = [model.tokenizer.decode(t) for t in tokens] if model.tokenizer is not None else None
    stats = {k: np.asarray(v) for k, v in out.stats.items()}
    bad = np.flatnonzero(stats.get("nonfinite", np.zeros(0, bool)))
    if bad.size:
        warnings.warn(f"generate ({mode}): prompts {bad.tolist()} stopped early: their logits became NaN or Inf "
                      "(non-finite weights or activations); their tokens end before that step "
                      "(result.stats['nonfinite'] flags them)", RuntimeWarning, stacklevel=3)
    return GenerateResult(tokens, nfe_l, tpf, stats, wall, mode, texts)


@sharding.under_params_mesh
def generate(model: Model, prompts, *, mode: str = "ar", max_new_tokens: int = 128, block_length: int | None = None,
             threshold=None, temperature=0.0, top_k=0, top_p=1.0, seed=0, policy: str = "threshold",
             policy_params: dict | None = None, lora: bool | None = None, max_thinking_tokens: int | None = None,
             end_think_token_id: int | None = None, cache_len: int | None = None,
             batch_size: int | None = None) -> GenerateResult:
    """Generate continuations of ``prompts`` (strings need ``model.tokenizer``; or lists of ids).

    Keywords:
    ``mode``: ``"ar"``, ``"diffusion"``, ``"linear_spec"`` or ``"quadratic_spec"``.
    ``max_new_tokens`` (128), ``block_length`` (the config's block size).
    ``threshold``: diffusion's confidence threshold (None = 0.9, the released model's chat default
    and SGLang's; ``policy="quota"`` runs the quota schedule instead) or linear speculation's draft
    threshold (None = 0: fill the block in one draft pass).
    ``temperature`` / ``top_k`` / ``top_p``: sampling (0 / 0 / 1 = greedy). ``threshold``,
    ``temperature``, ``top_k`` and ``top_p`` take a scalar or one value per prompt.
    ``policy``: the diffusion unmask policy (:mod:`nemodiff_jax.unmask`); ``policy_params``:
    per-mode extras: diffusion ``gamma`` (``eb``, traced, a scalar or one per prompt), linear_spec ``acceptance``
    (``"speculative"`` or ``"match"``, static), quadratic_spec ``ar_mix_weight`` (traced, < 0 = off).
    ``seed``: one int (prompt i samples with ``fold_in(key(seed), i)``) or one int per prompt
    (prompt i samples with ``key(seed[i])`` alone, so its tokens depend only on its prompt, its
    seed and the knobs, never on the other prompts or its place in the batch).
    ``lora``: use the draft LoRA in the bidirectional passes (default: when the model has one;
    AR and quadratic_spec ignore it). ``max_thinking_tokens`` / ``end_think_token_id``: the thinking budget.
    ``cache_len``: static KV-cache slots (default and minimum: the prompt bucket + the output
    bucket + the mode's window slack). ``batch_size``: slots decoded at once (default: every
    prompt at once); with fewer slots than prompts, a slot whose row ends takes the next
    waiting prompt, and every result equals that prompt run alone.
    """
    from .engine import decode

    p = prepare(model, prompts, mode=mode, max_new_tokens=max_new_tokens, block_length=block_length,
                threshold=threshold, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, policy=policy,
                policy_params=policy_params, lora=lora, max_thinking_tokens=max_thinking_tokens,
                end_think_token_id=end_think_token_id, cache_len=cache_len, batch_size=batch_size)
    compiled, compile_s = _compiled_decode(model.params, model.config, p.queue, p.spec)
    t0 = time.perf_counter()
    out = compiled(model.params, jax.tree.leaves(p.queue))
    out = jax.block_until_ready(sharding.replicated(out, p.mesh))
    res = _result(model, p.rows, out, time.perf_counter() - t0, p.spec.mode)
    res.compile_time = compile_s
    return res


_COMPILED: dict = {}


def _compiled_decode(params, cfg, queue, spec: LoopSpec):
    """The engine's decode compiled ahead of time (``lower().compile()``) for these shapes, cached,
    and the seconds compiling took (0 when cached): so ``wall_time`` never includes compilation.

    Lowered over the queue's flat leaves (runtime-checked Knobs reject ``Lowered``'s placeholders)."""
    from .engine import decode

    leaves, treedef = jax.tree.flatten(queue)
    # dtype and sharding objects hash and compare as they are (str() of them was most of a
    # short call's host time); numpy leaves have no sharding.
    sig = (cfg, spec, treedef, jax.tree.structure(params),
           tuple((x.shape, x.dtype, getattr(x, "sharding", None)) for x in jax.tree.leaves((params, leaves))))
    if sig in _COMPILED:
        return _COMPILED[sig], 0.0

    def run(params, leaves):
        return decode(params, cfg, jax.tree.unflatten(treedef, leaves), spec=spec)

    t0 = time.perf_counter()
    fn = jax.jit(run).lower(params, leaves).compile()
    if len(_COMPILED) > 32:
        _COMPILED.clear()
    _COMPILED[sig] = fn
    return fn, time.perf_counter() - t0


@dataclasses.dataclass
class StreamUpdate:
    """What :func:`stream` yields: per prompt, the tokens decided so far and whether it is done;
    for diffusion also each running row's current block (mask ids where undecided)."""

    tokens: list[list[int]]
    finished: list[bool]
    canvas: list[list[int]] | None = None
    texts: list[str] | None = None
    result: GenerateResult | None = None  # on the last yield: what generate() returns


def stream(model: Model, prompts, *, every: int = 1, **kwargs) -> Iterator[StreamUpdate]:
    """Run :func:`generate`'s engine ``every`` rounds at a time, yielding what is decided so far.

    A round is one forward per row (an AR token, a denoise or commit pass, a draft or verify
    pass, a quadratic cycle). The tokens of a yield are final (speculative modes only yield
    verified tokens); the last yield has every prompt finished and equals :func:`generate`.
    The compiled programs do not depend on ``every``."""
    if not isinstance(every, (int, np.integer)) or every < 1:
        raise ValueError(f"every must be a positive integer, got {every!r}")
    p = prepare(model, prompts, **kwargs)
    with sharding.use_mesh(model.params):  # a sharded model: the same placement rules as generate
        yield from _stream_rounds(model, p, every)


def _stream_rounds(model: Model, p: Prepared, every: int) -> Iterator[StreamUpdate]:
    from . import engine

    cfg, params = model.config, model.params
    progs = (engine.start, engine.advance, engine.peek)
    sizes = [f._cache_size() for f in progs]
    t0 = time.perf_counter()
    e, queue = engine.start(params, cfg, p.queue, spec=p.spec)
    p = dataclasses.replace(p, queue=queue)
    compile_s, first = 0.0, True
    while True:
        e = engine.advance(params, cfg, e, p.queue, every, spec=p.spec)
        # gathered onto every device first, so each process of a multi-host mesh can read it
        view = jax.device_get(sharding.replicated(engine.peek(cfg, e, p.queue, spec=p.spec), p.mesh))
        if first and [f._cache_size() for f in progs] != sizes:
            # The first round compiled: its time (compilation and that one round) is compile_time,
            # so the result's wall_time and tokens/s are the decode alone.
            compile_s, t0 = time.perf_counter() - t0, time.perf_counter()
        first = False
        toks = [view["tokens"][i, : int(view["num_tokens"][i])].tolist() for i in range(len(p.rows))]
        done = not engine.busy(e, p.queue)
        upd = StreamUpdate(toks, [bool(x) for x in view["finished"]] if not done else [True] * len(toks))
        if "canvas" in view:
            upd.canvas = view["canvas"].tolist()
        if model.tokenizer is not None:
            upd.texts = [model.tokenizer.decode(t) for t in toks]
        if done:
            from .common import DecodeOutput

            out = DecodeOutput(tokens=e.out["tokens"], num_tokens=e.out["num_tokens"], nfe=e.out["nfe"],
                               stats=e.out["stats"])
            out = sharding.replicated(out, p.mesh)
            upd.result = _result(model, p.rows, out, time.perf_counter() - t0, p.spec.mode)
            upd.result.compile_time = compile_s
        yield upd
        if done:
            return
