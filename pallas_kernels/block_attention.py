"""Flash attention of a query window over the static KV cache, in Pallas (Triton lowering).

One kernel serves every NLD mode: AR steps (Q=1), diffusion blocks, prompt chunks, the
quadratic B x (B+1) layout and the training ``[x_t | x_0]`` sequence. Visibility comes from
:func:`nemodiff_jax.model.masks.visibility`, the same predicate the model's ``xla_attention`` and this
module's own :func:`reference` build their dense mask from, so the paths cannot drift.

How it works (docs/KERNELS.md has the long version):

* GQA folding: the ``G = Hq / Hkv`` query heads that share a KV head become extra rows of
  one tile, query-major (row ``r`` = query ``r // G``, head ``r % G``). A Q=1 decode step
  fills a 16-row tile with its G heads instead of wasting 15 of 16 rows per head, every
  row of a tile shares its query positions (so key ranges are per tile), and each K/V tile
  is read once for all G heads.
* Grid ``(B, Hkv, row tiles, splits)``. Each program keeps its q tile in registers and runs
  an online softmax (fp32) over the K/V tiles it may need, in ``fori_loop``s with *dynamic*
  trip counts computed from the per-row policy: tiles wholly inside the prefix run without
  a mask, then one or two masked intervals (:func:`visible_key_intervals`) cover the window.
  Keys past the last visible one (``prefix_len + window_len`` and beyond, the causal tail,
  the later rows of the quadratic layout, the later blocks of ``block_diff``) are never read.
* Split-K ("flash decoding"): with few (batch, kv head, row tile) programs, e.g. batch-1
  decoding, the visited tiles are cut into ``num_splits`` even chunks, each program writes an
  unnormalised partial (acc, max, sum), and a small jnp step merges them.
* Shapes are padded inside the wrapper to power-of-two tiles (Triton needs them) and the
  result sliced; padded keys are masked, padded query rows dropped.

Fully masked query rows (only possible with ``prefix_len == 0`` and ``window_len == 0``)
come out as zeros, here, in :func:`reference` and in ``xla_attention`` alike.

The kernel imports nothing from the model but the policy (:mod:`nemodiff_jax.model.masks`): its
backward goes through :func:`reference`, its own dense jnp attention.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltr

from nemodiff_jax.model.masks import AttentionPolicy, RowPolicy, visibility
from pallas_kernels.reference import reference

# Finite, so that exp(MASKED - MASKED) is 1 rather than NaN on rows that have seen no key yet.
MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)
MIN_TILE = 16  # smallest M/N/K of a Triton dot
TARGET_PROGRAMS = 128  # about one wave on a 132-SM H100: auto split-K aims for this many programs
# Each split writes and re-reads a [block_q, D] fp32 partial, 2 * block_q / (tiles * block_k) of
# its K/V bytes: 16 tiles of 64 keys keep that at 25% (bq 128) even before L2 absorbs it.
MIN_TILES_PER_SPLIT = 16


@dataclasses.dataclass(frozen=True)
class TileConfig:
    """Static tiling knobs (hashable, so part of the jit cache key).

    ``block_q``/``block_k`` are upper bounds (powers of two >= 16); the wrapper shrinks them
    to the problem. ``block_q=128`` holds a whole 32-query block of the 8B model (G=4 -> 128
    rows) in one tile, so its K/V are read once. ``num_warps=None``: 8 for 128x128 fp32
    accumulators, else 4. ``num_splits=None`` picks split-K from the shapes (:func:`make_plan`).
    """

    block_q: int = 128
    block_k: int = 64
    num_warps: int | None = None
    num_stages: int = 2
    num_splits: int | None = None

    def __post_init__(self):
        for name in ("block_q", "block_k"):
            val = getattr(self, name)
            if val < MIN_TILE or val & (val - 1):
                raise ValueError(f"{name} must be a power of two >= {MIN_TILE}, got {val}")
        if self.num_splits is not None and self.num_splits < 1:
            raise ValueError(f"num_splits must be >= 1, got {self.num_splits}")


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything static about one call: padded sizes, tiles, grid, Triton params."""

    batch: int
    kv_heads: int
    group: int  # query heads per kv head, folded into the rows
    num_queries: int
    num_keys: int
    head_dim: int
    block_q: int
    block_k: int
    rows_padded: int  # Q * G rounded up to block_q
    keys_padded: int  # T rounded up to block_k (== T when block_k divides T)
    dim_padded: int
    num_splits: int
    num_warps: int
    num_stages: int

    @property
    def row_tiles(self) -> int:
        return self.rows_padded // self.block_q

    @property
    def grid(self) -> tuple[int, int, int, int]:
        return (self.batch, self.kv_heads, self.row_tiles, self.num_splits)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def make_plan(
    batch, q_heads, kv_heads, num_queries, num_keys, head_dim, config: TileConfig = TileConfig(), itemsize: int = 2
) -> Plan:
    """Choose tiles for ``q [B, Hq, Q, D]`` over ``k, v [B, Hkv, T, D]`` (pure Python)."""
    if q_heads % kv_heads:
        raise ValueError(f"q heads {q_heads} not a multiple of kv heads {kv_heads}")
    group = q_heads // kv_heads
    rows = num_queries * group
    dim_padded = max(MIN_TILE, _next_pow2(head_dim))
    # fp32 tiles are twice the registers: keep a 128-wide head at 64 rows.
    cap = 64 if itemsize >= 4 and dim_padded >= 128 else config.block_q
    block_q = min(config.block_q, cap, max(MIN_TILE, _next_pow2(rows)))
    # Prefer a key tile that divides T: padding K/V would copy the whole cache every call.
    block_k = next((b for b in (config.block_k >> i for i in range(8)) if b >= MIN_TILE and num_keys % b == 0), None)
    if block_k is None:
        block_k = min(config.block_k, max(MIN_TILE, _next_pow2(num_keys)))
    rows_padded = -(-rows // block_q) * block_q
    keys_padded = -(-num_keys // block_k) * block_k
    splits = config.num_splits
    if splits is None:
        programs = batch * kv_heads * (rows_padded // block_q)
        splits = max(1, min(-(-TARGET_PROGRAMS // programs), keys_padded // (block_k * MIN_TILES_PER_SPLIT), 32))
    return Plan(
        batch=batch,
        kv_heads=kv_heads,
        group=group,
        num_queries=num_queries,
        num_keys=num_keys,
        head_dim=head_dim,
        block_q=block_q,
        block_k=block_k,
        rows_padded=rows_padded,
        keys_padded=keys_padded,
        dim_padded=dim_padded,
        num_splits=splits,
        num_warps=config.num_warps or (8 if block_q * dim_padded >= 128 * 128 else 4),
        num_stages=config.num_stages,
    )


def visible_key_intervals(policy: RowPolicy, q_lo, q_hi):
    """Sorted, disjoint cache-slot intervals ``[lo, hi)`` holding every key that some query
    in ``[q_lo, q_hi]`` may see (``policy``: one row, scalar fields).

    The kernel visits only K/V tiles that meet these intervals; everything else is masked
    for the whole tile. Pure jnp on scalars, so it runs inside the kernel and in tests.
    """
    p, wl = policy.prefix_len, policy.window_len
    zero = jnp.zeros_like(p)
    if policy.layout == "window":
        # Causal rows see window keys <= q, rows from bidir_start on see the whole window.
        hi_w = jnp.where(q_hi >= policy.bidir_start, wl, jnp.minimum(q_hi + 1, wl))
        return [(zero, p + jnp.maximum(hi_w, 0))]
    if policy.layout == "quadratic":
        # Rows only look back (heads 0..r) or at their own row: stop after the last row,
        # or right after q_hi when q_hi is a row head (heads see no masks).
        width = policy.block + 1
        hi_w = jnp.where(q_hi % width == 0, q_hi + 1, (q_hi // width + 1) * width)
        hi_w = jnp.minimum(hi_w, wl)
        return [(zero, p + jnp.maximum(hi_w, 0))]
    # block_diff over [x_t | x_0]: noisy rows see their own noisy blocks and strictly
    # earlier clean blocks, clean rows see the clean keys up to themselves.
    blk, half = policy.block, wl // 2
    has_noisy = q_lo < half
    noisy_last = jnp.minimum(q_hi, half - 1)
    noisy_lo = (q_lo // blk) * blk
    noisy_hi = jnp.minimum((noisy_last // blk + 1) * blk, half)
    clean_hi = jnp.maximum(
        jnp.where(has_noisy, (noisy_last // blk) * blk, 0),
        jnp.where(q_hi >= half, q_hi - half + 1, 0),
    )
    clean_hi = jnp.minimum(clean_hi, wl - half)
    # The prefix (if any) is visible to all, so the first interval then starts at 0.
    lo1 = jnp.where(p > 0, 0, jnp.where(has_noisy, p + noisy_lo, p))
    hi1 = jnp.where(has_noisy, p + noisy_hi, p)
    return [(lo1, hi1), (p + half, p + half + jnp.maximum(clean_hi, 0))]


def tile_segments(policy: RowPolicy, q_lo, q_hi, num_keys: int, block_k: int):
    """The K/V tile ranges a row tile visits, as ``[(start, stop, masked)]`` in tile units.

    First the tiles wholly inside the prefix (no mask needed), then one range per
    :func:`visible_key_intervals` interval, each clipped so no tile is visited twice.
    """
    n_full = jnp.minimum(policy.prefix_len, num_keys) // block_k
    segments = [(jnp.zeros_like(n_full), n_full, False)]
    prev = n_full
    for lo, hi in visible_key_intervals(policy, q_lo, q_hi):
        hi = jnp.minimum(hi, num_keys)
        start = jnp.maximum(lo // block_k, prev)
        stop = jnp.where(hi > lo, jnp.maximum((hi + block_k - 1) // block_k, start), start)
        segments.append((start, stop, True))
        prev = stop
    return segments


def _kernel(
    prefix_ref, bidir_ref, wlen_ref, q_ref, k_ref, v_ref, *out_refs, plan: Plan, layout: str, block: int, sm_scale: float
):
    """One (batch row, kv head, row tile, split) program; see the module docstring."""
    bq, bk = plan.block_q, plan.block_k
    row0 = pl.program_id(2) * bq
    split = pl.program_id(3)
    policy = RowPolicy(prefix_ref[()], bidir_ref[()], wlen_ref[()], layout, block)

    q = q_ref[...]
    precision = lax.Precision.HIGHEST if q.dtype == jnp.float32 else None  # fp32 in: IEEE dots, not TF32

    def dot(a, b, contract):  # fp32 accumulation whatever the input dtype
        return lax.dot_general(a, b, (contract, ((), ())), precision=precision, preferred_element_type=jnp.float32)

    q_idx = ((row0 + jnp.arange(bq, dtype=jnp.int32)) // plan.group)[:, None]
    q_lo = row0 // plan.group
    q_hi = jnp.minimum((row0 + bq - 1) // plan.group, plan.num_queries - 1)
    segments = tile_segments(policy, q_lo, q_hi, plan.num_keys, bk)

    def step(j, carry, masked: bool):
        acc, m_prev, l_prev = carry
        start = pl.multiple_of(j * bk, bk)
        k = k_ref[pl.ds(start, bk), :]
        s = dot(q, k, ((1,), (1,))) * sm_scale
        if masked:
            k_slot = (start + jnp.arange(bk, dtype=jnp.int32))[None, :]
            mask = visibility(policy, q_idx, k_slot)
            if plan.keys_padded != plan.num_keys:
                mask = mask & (k_slot < plan.num_keys)
            s = jnp.where(mask, s, MASKED)
        m_next = jnp.maximum(m_prev, jnp.max(s, axis=1))
        alpha = jnp.exp(m_prev - m_next)
        p = jnp.exp(s - m_next[:, None])
        if masked:  # exact zeros, also on rows that have seen nothing visible yet
            p = jnp.where(mask, p, 0.0)
        v = v_ref[pl.ds(start, bk), :]
        acc = acc * alpha[:, None] + dot(p.astype(v.dtype), v, ((1,), (0,)))
        return acc, m_next, l_prev * alpha + jnp.sum(p, axis=1)

    carry = (
        jnp.zeros((bq, plan.dim_padded), jnp.float32),
        jnp.full((bq,), MASKED, jnp.float32),
        jnp.zeros((bq,), jnp.float32),
    )
    # This split takes visited tiles [c0, c1) of the concatenated segments.
    total = sum(stop - start for start, stop, _ in segments)
    per = (total + plan.num_splits - 1) // plan.num_splits
    c0, c1 = split * per, jnp.minimum((split + 1) * per, total)
    offset = 0
    for start, stop, masked in segments:
        n = stop - start
        lo = start + jnp.clip(c0 - offset, 0, n)
        hi = start + jnp.clip(c1 - offset, 0, n)
        carry = lax.fori_loop(lo, jnp.maximum(hi, lo), functools.partial(step, masked=masked), carry)
        offset = offset + n
    acc, m, l = carry

    if plan.num_splits == 1:
        (o_ref,) = out_refs
        o_ref[...] = (acc / jnp.where(l > 0, l, 1.0)[:, None]).astype(o_ref.dtype)
    else:
        acc_ref, m_ref, l_ref = out_refs
        acc_ref[...] = acc
        m_ref[...] = m
        l_ref[...] = l


def _merge_splits(acc, m, l):
    """Combine split-K partials ``acc [..., S, R, D]``, ``m, l [..., S, R]`` (fp32)."""
    m_all = jnp.max(m, axis=-2, keepdims=True)
    w = jnp.exp(m - m_all)
    denom = jnp.sum(w * l, axis=-2)
    num = jnp.sum(w[..., None] * acc, axis=-3)
    return num / jnp.where(denom > 0, denom, 1.0)[..., None]


@functools.partial(jax.jit, static_argnames=("sm_scale", "config", "interpret"))
def block_attention(
    q, k, v, policy: AttentionPolicy, *, sm_scale: float, config: TileConfig = TileConfig(), interpret: bool | None = None
):
    """Attention of window queries ``q [B, Hq, Q, D]`` over the cache ``k, v [B, Hkv, T, D]``.

    The window's own K/V must already sit at slots ``[prefix_len, prefix_len + Q)``.
    Returns ``[B, Hq, Q, D]`` in ``q.dtype``; equals :func:`reference` (fp32 softmax).
    ``interpret=None`` runs the Pallas interpreter unless the default backend is a GPU.
    Differentiable: the backward pass is :func:`reference`'s (dense, recomputed), so
    training can use the kernel's forward.
    """
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    # The policy crosses custom_vjp as bare arrays: JAX rebuilds custom_vjp pytrees from
    # placeholder leaves, which a shape-checked AttentionPolicy.__init__ would reject.
    raw = (policy.prefix_len, policy.bidir_start, policy.window_len)
    fields = [jnp.broadcast_to(jnp.asarray(x, jnp.int32), q.shape[:1]) for x in raw]
    static = (policy.layout, policy.block, float(sm_scale), config, bool(interpret))
    return _attention(q, k, v, *fields, *static)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9, 10))
def _attention(q, k, v, prefix_len, bidir_start, window_len, layout, block, sm_scale, config, interpret):
    policy = AttentionPolicy(prefix_len, bidir_start, window_len, layout, block)
    return _forward(q, k, v, policy, sm_scale, config, interpret)


def _attention_fwd(q, k, v, prefix_len, bidir_start, window_len, layout, block, sm_scale, config, interpret):
    out = _attention(q, k, v, prefix_len, bidir_start, window_len, layout, block, sm_scale, config, interpret)
    return out, (q, k, v, prefix_len, bidir_start, window_len)


def _attention_bwd(layout, block, sm_scale, config, interpret, residuals, d_out):
    q, k, v, prefix_len, bidir_start, window_len = residuals
    policy = AttentionPolicy(prefix_len, bidir_start, window_len, layout, block)
    _, vjp = jax.vjp(lambda q_, k_, v_: reference(q_, k_, v_, policy, sm_scale=sm_scale), q, k, v)
    return (*vjp(d_out), None, None, None)  # integer policy fields: no cotangent


_attention.defvjp(_attention_fwd, _attention_bwd)


def _forward(q, k, v, policy: AttentionPolicy, sm_scale: float, config: TileConfig, interpret: bool):
    """Fold heads, pad to tiles, run the kernel, merge splits, unfold."""
    b, hq, nq, d = q.shape
    _, hkv, t, _ = k.shape
    if k.shape != v.shape or k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"shape mismatch: q {q.shape}, k {k.shape}, v {v.shape}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    plan = make_plan(b, hq, hkv, nq, t, d, config, itemsize=q.dtype.itemsize)
    g, bq = plan.group, plan.block_q

    # Fold the G heads of each kv head into rows, query-major: [B, Hkv, Q*G, D].
    qf = q.reshape(b, hkv, g, nq, d).transpose(0, 1, 3, 2, 4).reshape(b, hkv, nq * g, d)
    qf = jnp.pad(qf, ((0, 0), (0, 0), (0, plan.rows_padded - nq * g), (0, plan.dim_padded - d)))
    if plan.keys_padded != t or plan.dim_padded != d:  # slow path: copies the cache
        pad = ((0, 0), (0, 0), (0, plan.keys_padded - t), (0, plan.dim_padded - d))
        k, v = jnp.pad(k, pad), jnp.pad(v, pad)

    dp, tp, s = plan.dim_padded, plan.keys_padded, plan.num_splits
    scalar = pl.BlockSpec((None,), lambda bi, hi, ri, si: (bi,))
    in_specs = [
        scalar,
        scalar,
        scalar,
        pl.BlockSpec((None, None, bq, dp), lambda bi, hi, ri, si: (bi, hi, ri, 0)),
        pl.BlockSpec((None, None, tp, dp), lambda bi, hi, ri, si: (bi, hi, 0, 0)),
        pl.BlockSpec((None, None, tp, dp), lambda bi, hi, ri, si: (bi, hi, 0, 0)),
    ]
    if s == 1:
        out_shape = [jax.ShapeDtypeStruct((b, hkv, plan.rows_padded, dp), q.dtype)]
        out_specs = [pl.BlockSpec((None, None, bq, dp), lambda bi, hi, ri, si: (bi, hi, ri, 0))]
    else:
        out_shape = [
            jax.ShapeDtypeStruct((b, hkv, s, plan.rows_padded, dp), jnp.float32),
            jax.ShapeDtypeStruct((b, hkv, s, plan.rows_padded), jnp.float32),
            jax.ShapeDtypeStruct((b, hkv, s, plan.rows_padded), jnp.float32),
        ]
        out_specs = [
            pl.BlockSpec((None, None, None, bq, dp), lambda bi, hi, ri, si: (bi, hi, si, ri, 0)),
            pl.BlockSpec((None, None, None, bq), lambda bi, hi, ri, si: (bi, hi, si, ri)),
            pl.BlockSpec((None, None, None, bq), lambda bi, hi, ri, si: (bi, hi, si, ri)),
        ]
    kernel = functools.partial(_kernel, plan=plan, layout=policy.layout, block=policy.block, sm_scale=float(sm_scale))
    outs = pl.pallas_call(
        kernel,
        grid=plan.grid,
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=pltr.CompilerParams(num_warps=plan.num_warps, num_stages=plan.num_stages),
        interpret=interpret,
        name=f"block_attention_{policy.layout}" + ("_splitk" if s > 1 else ""),
    )(policy.prefix_len, policy.bidir_start, policy.window_len, qf, k, v)
    out = outs[0] if s == 1 else _merge_splits(*outs).astype(q.dtype)

    out = out[:, :, : nq * g, :d].reshape(b, hkv, nq, g, d).transpose(0, 1, 3, 2, 4)
    return out.reshape(b, hq, nq, d)
