"""block_attention in interpret mode vs xla_attention and vs a float64 brute force written
here from the spec (not from masks.py); the tile-skipping ranges vs the brute-force mask;
and the CUDA (Triton) lowering of every variant we ship.

Each numeric test compiles one shape once and then sweeps random per-row policies through
it, which is also how it checks that changing prefix lengths never retraces.
"""

from __future__ import annotations

import collections
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nemodiff_jax.model import masks
from nemodiff_jax.model.attention import attend, xla_attention
from nemodiff_jax.model.masks import AttentionPolicy, RowPolicy
from pallas_kernels.block_attention import TileConfig, block_attention, make_plan, tile_segments

TRACES: collections.Counter = collections.Counter()
SMALL = TileConfig(block_q=16, block_k=16)


@functools.partial(jax.jit, static_argnames=("sm_scale", "config"))
def kernel_fn(q, k, v, policy, sm_scale, config):
    TRACES[(q.shape, k.shape, str(q.dtype), policy.layout, policy.block, config)] += 1
    return block_attention(q, k, v, policy, sm_scale=sm_scale, config=config)  # interpret=None: CPU -> interpreter


ref_fn = jax.jit(xla_attention, static_argnames=("sm_scale",))


# ---------------------------------------------------------------- brute force from the spec


def np_mask(layout, block, prefix, bidir, wlen, nq, nt):
    """[Q, T] visibility written from masks.py's docstring, QUADRATIC.md A.2 and NLD_SPEC 2.6."""
    m = np.zeros((nq, nt), bool)
    for i in range(nq):
        for s in range(nt):
            if s < prefix:
                m[i, s] = True
                continue
            j = s - prefix
            if j >= wlen:
                continue
            if layout == "window":
                ok = j <= i or (i >= bidir and j < wlen)
            elif layout == "quadratic":
                qi, qs = divmod(i, block + 1)
                kj, ks = divmod(j, block + 1)
                ok = (ks == 0 and kj <= qi) or (qs > 0 and kj == qi)
            else:
                half = wlen // 2
                qn, kn = i < half, j < half
                qp, kp = (i if qn else i - half), (j if kn else j - half)
                ok = (
                    (qp // block == kp // block)
                    if qn and kn
                    else (kp // block < qp // block)
                    if qn
                    else (not kn and kp <= qp)
                )
            m[i, s] = ok
    return m


def np_attention(q, k, v, policy, sm_scale):
    q, k, v = (np.asarray(jnp.asarray(x, jnp.float32), np.float64) for x in (q, k, v))
    b, hq, nq, _ = q.shape
    g = hq // k.shape[1]
    out = np.zeros_like(q)
    for r in range(b):
        mask = np_mask(
            policy.layout, policy.block, int(policy.prefix_len[r]), int(policy.bidir_start[r]),
            int(policy.window_len[r]), nq, k.shape[2],
        )
        assert mask.any(axis=1).all(), "test policies must leave every query a key"
        for h in range(hq):
            s = q[r, h] @ k[r, h // g].T * sm_scale
            s = np.where(mask, s, -np.inf)
            p = np.exp(s - s.max(axis=1, keepdims=True))
            out[r, h] = (p / p.sum(axis=1, keepdims=True)) @ v[r, h // g]
    return out


# ---------------------------------------------------------------- helpers


def qkv(seed, b, hq, hkv, nq, nt, d, dtype):
    rng = np.random.default_rng(seed)
    shapes = ((b, hq, nq, d), (b, hkv, nt, d), (b, hkv, nt, d))
    return tuple(jnp.asarray(rng.standard_normal(s, np.float32), dtype) for s in shapes)


def policy(prefix, bidir, wlen, layout="window", block=0):
    arr = lambda x: jnp.asarray(x, jnp.int32)  # noqa: E731
    return AttentionPolicy(arr(prefix), arr(bidir), arr(wlen), layout, block)


TOLS = {jnp.float32: (1e-5, 1e-5), jnp.bfloat16: (2e-2, 4e-2)}  # (vs xla, vs float64)


def check_sweep(shape, dtype, policies, config=SMALL, seed=0):
    """Run every policy through one compiled kernel and compare with both references."""
    b, hq, hkv, nq, nt, d = shape
    q, k, v = qkv(seed, b, hq, hkv, nq, nt, d, dtype)
    scale = d**-0.5
    tol_xla, tol_np = TOLS[dtype]
    for pol in policies:
        got = np.asarray(kernel_fn(q, k, v, pol, scale, config), np.float32)
        assert got.dtype == np.float32 and got.shape == q.shape
        want = np.asarray(ref_fn(q, k, v, pol, sm_scale=scale), np.float32)
        np.testing.assert_allclose(got, want, atol=tol_xla, rtol=tol_xla)
        np.testing.assert_allclose(got, np_attention(q, k, v, pol, scale), atol=tol_np, rtol=tol_np)
    # Different prefix lengths / flags are data: exactly one trace for the whole sweep.
    key = (q.shape, k.shape, str(q.dtype), policies[0].layout, policies[0].block, config)
    assert TRACES[key] == 1, TRACES


def window_policies(rng, b, nq, nt, n=3):
    """Mixed rows: causal, bidirectional, mixed bidir_start, right-padded window_len."""
    out = []
    for _ in range(n):
        prefix = rng.integers(0, nt - nq + 1, b)
        prefix[0] = rng.choice([0, 16, nt - nq])  # tile boundaries and extremes
        kind = rng.integers(0, 4, b)
        bidir = np.where(kind == 0, nq, np.where(kind == 1, 0, rng.integers(1, nq, b)))
        wlen = np.where(kind == 3, rng.integers(1, nq, b), np.where(kind == 2, rng.integers(1, nq + 1, b), nq))
        bidir = np.where(kind == 3, 0, bidir)
        out.append(policy(prefix, bidir, wlen))
    return out


# ---------------------------------------------------------------- numerics


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_window_layouts(dtype):
    # Q=12 and T=40 are not tile multiples (T padded to 48), G=2, two row tiles.
    rng = np.random.default_rng(1)
    shape = (3, 4, 2, 12, 40, 16)
    pols = window_policies(rng, 3, 12, 40)
    pols.append(masks.causal(jnp.array([0, 7, 28]), 12))
    pols.append(masks.bidirectional(jnp.array([0, 16, 28]), 12))
    pols.append(masks.mixed(jnp.array([3, 9, 20]), jnp.array([4, 0, 11]), jnp.array([12, 5, 11])))
    check_sweep(shape, dtype, pols)


def test_fully_masked_row_is_zero():
    """prefix_len == window_len == 0 leaves a row no key: both paths return 0 there."""
    shape = (3, 4, 2, 12, 40, 16)
    q, k, v = qkv(0, *shape, jnp.float32)
    pol = policy([5, 20, 0], [0, 12, 0], [12, 12, 0])
    got = np.asarray(kernel_fn(q, k, v, pol, 0.25, SMALL))
    want = np.asarray(ref_fn(q, k, v, pol, sm_scale=0.25))
    np.testing.assert_allclose(got[:2], want[:2], atol=1e-5)
    assert not np.any(got[2]) and not np.any(want[2])


def test_decode_q1_gqa_folding_via_attend():
    # Q=1, G=4: the four heads of a kv head fill one 16-row tile; default tiles, 4 K/V tiles.
    b, hq, hkv, nt, d = 2, 8, 2, 256, 32
    plan = make_plan(b, hq, hkv, 1, nt, d)
    assert (plan.block_q, plan.row_tiles, plan.block_k) == (16, 1, 64)
    q, k, v = qkv(3, b, hq, hkv, 1, nt, d, jnp.float32)
    for prefix in ([0, 255], [64, 100], [63, 200]):
        pol = masks.causal(jnp.array(prefix), 1)
        got = np.asarray(attend(q, k, v, pol, sm_scale=d**-0.5, impl="pallas"))
        np.testing.assert_allclose(got, np.asarray(ref_fn(q, k, v, pol, sm_scale=d**-0.5)), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(got, np_attention(q, k, v, pol, d**-0.5), atol=1e-5, rtol=1e-5)


def test_split_k_window():
    # Three splits over the visited tiles; G=4 (Hkv=1), rows 32 -> two 16-row tiles.
    rng = np.random.default_rng(2)
    pols = window_policies(rng, 2, 8, 96, n=4)
    check_sweep((2, 4, 1, 8, 96, 16), jnp.float32, pols, config=dataclasses.replace(SMALL, num_splits=3))


def quadratic_policies(rng, b, blk, nt, n=3):
    nq = blk * (blk + 1)
    return [masks.quadratic(jnp.asarray(np.r_[0, rng.integers(1, nt - nq + 1, b - 1)]), blk) for _ in range(n)]


def test_quadratic_f32():
    rng = np.random.default_rng(4)
    check_sweep((2, 4, 2, 12, 64, 16), jnp.float32, quadratic_policies(rng, 2, 3, 64))


def test_quadratic_bf16_split_k():
    rng = np.random.default_rng(5)
    cfg = dataclasses.replace(SMALL, num_splits=2)
    check_sweep((2, 4, 2, 20, 64, 16), jnp.bfloat16, quadratic_policies(rng, 2, 4, 64), config=cfg)


@pytest.mark.parametrize("cache", [20, 40], ids=["no_cache", "cached"])
def test_block_diff(cache):
    # L=10 with block 4: the halves end mid-block and 16-row tiles straddle x_t | x_0.
    # Training has no cache (T == 2L, prefix 0); the predicate also defines a cached prefix.
    pols = [masks.block_diff(10, 4, 2)]
    if cache > 20:
        pols += [policy([0, 13], [0, 0], [20, 20], "block_diff", 4), policy([20, 7], [0, 0], [20, 20], "block_diff", 4)]
    check_sweep((2, 4, 2, 20, cache, 16), jnp.float32, pols, seed=6)


# ---------------------------------------------------------------- tile skipping


@pytest.mark.parametrize("layout", ["window", "quadratic", "block_diff"])
def test_tile_segments_cover_exactly_the_visible_tiles(layout):
    """Every tile with a visible key is visited once; for window and block_diff every visited
    tile holds a visible key (no wasted tiles), and for all layouts the last one does."""
    rng = np.random.default_rng(7)
    bk, nt, rows_per_tile = 4, 48, 4
    seg_fn = jax.jit(
        lambda fields, lo, hi, layout, blk: tile_segments(RowPolicy(*fields, layout, blk), lo, hi, nt, bk),
        static_argnums=(3, 4),
    )
    for trial in range(12):
        if layout == "window":
            nq = 12
            prefix, bidir = int(rng.integers(0, nt - nq)), int(rng.integers(0, nq + 1))
            wlen = int(rng.integers(1, nq + 1))
            blk = 0
        elif layout == "quadratic":
            blk = 3
            nq = blk * (blk + 1)
            prefix, bidir, wlen = int(rng.integers(0, nt - nq)), nq, nq
        else:
            blk, half = int(rng.integers(2, 6)), int(rng.integers(6, 13))
            nq, prefix, bidir, wlen = 2 * half, 0 if trial % 3 else int(rng.integers(1, 16)), 0, 2 * half
        fields = tuple(jnp.int32(x) for x in (prefix, bidir, wlen))
        mask = np_mask(layout, blk, prefix, bidir, wlen, nq, nt)
        for q_lo in range(0, nq, rows_per_tile):
            q_hi = min(q_lo + rows_per_tile - 1, nq - 1)
            segs = seg_fn(fields, jnp.int32(q_lo), jnp.int32(q_hi), layout, blk)
            visited = []
            for start, stop, _ in segs:
                visited += list(range(int(start), int(stop)))
            assert len(visited) == len(set(visited)), visited
            tile_has_key = mask[q_lo : q_hi + 1].reshape(-1, nt // bk, bk).any(axis=(0, 2))
            needed = set(np.flatnonzero(tile_has_key))
            assert needed <= set(visited), (layout, prefix, bidir, wlen, q_lo, needed - set(visited))
            assert max(visited) == max(needed)
            if layout == "window" or (layout == "block_diff" and prefix == 0):
                assert set(visited) == needed, (layout, prefix, bidir, wlen, q_lo, set(visited) - needed)


# ---------------------------------------------------------------- CUDA lowering

# The variants we ship, at the 8B geometry (32 q heads, 8 kv heads, head_dim 128): every
# layout, fp32 and bf16, split-K on and off, block_q 16/32/64/128, block_k 16/32/64, 4 and 8 warps.
D8B = dict(b=2, hq=32, hkv=8, d=128)
LOWERINGS = [
    ("window", 1, 4096, jnp.bfloat16, TileConfig()),  # AR step: G=4 rows -> bq 16, split-K
    ("window", 1, 4000, jnp.bfloat16, TileConfig(num_splits=1)),  # bk 32 (4000 = 125 * 32)
    ("window", 8, 4080, jnp.bfloat16, TileConfig()),  # 32 rows -> bq 32, bk 16
    ("window", 16, 4096, jnp.bfloat16, TileConfig(num_splits=1)),  # bq 64, 4 warps
    ("window", 32, 4096, jnp.bfloat16, TileConfig(num_splits=1)),  # diffusion block: bq 128, 8 warps
    ("window", 32, 32768, jnp.bfloat16, TileConfig()),  # split-K at 32k
    ("window", 32, 4096, jnp.float32, TileConfig()),
    ("window", 100, 4096, jnp.bfloat16, TileConfig(block_q=32, block_k=32)),  # prompt chunk, padded rows
    ("quadratic", 16 * 17, 4096, jnp.bfloat16, TileConfig()),
    ("quadratic", 32 * 33, 8192, jnp.bfloat16, TileConfig(num_splits=2)),
    ("quadratic", 32 * 33, 8192, jnp.float32, TileConfig()),
    ("block_diff", 512, 512, jnp.bfloat16, TileConfig()),
    ("block_diff", 512, 512, jnp.float32, TileConfig(num_splits=2)),
]


def _lowering_id(case):
    layout, nq, nt, dtype, config = case
    p = make_plan(D8B["b"], D8B["hq"], D8B["hkv"], nq, nt, D8B["d"], config, jnp.dtype(dtype).itemsize)
    return f"{layout}-Q{nq}-T{nt}-{jnp.dtype(dtype).name}-bq{p.block_q}-bk{p.block_k}-s{p.num_splits}-w{p.num_warps}"


def _policy_for(layout, nq, b):
    zeros = jnp.zeros((b,), jnp.int32)
    if layout == "window":
        return masks.mixed(zeros, zeros, jnp.full((b,), nq, jnp.int32))
    if layout == "quadratic":
        return masks.quadratic(zeros, int(nq**0.5))
    return masks.block_diff(nq // 2, 32, b)


@pytest.mark.parametrize("layout,nq,nt,dtype,config", LOWERINGS, ids=[_lowering_id(c) for c in LOWERINGS])
def test_cuda_lowering_is_triton(layout, nq, nt, dtype, config):
    b, hq, hkv, d = D8B["b"], D8B["hq"], D8B["hkv"], D8B["d"]
    pol = _policy_for(layout, nq, b)

    def fn(q, k, v, prefix_len, bidir_start, window_len):  # policy fields stay traced
        row_pol = AttentionPolicy(prefix_len, bidir_start, window_len, pol.layout, pol.block)
        return block_attention(q, k, v, row_pol, sm_scale=d**-0.5, config=config, interpret=False)

    sds = jax.ShapeDtypeStruct
    rows = sds((b,), jnp.int32)
    args = (sds((b, hq, nq, d), dtype), sds((b, hkv, nt, d), dtype), sds((b, hkv, nt, d), dtype), rows, rows, rows)
    text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    assert "__gpu$xla.gpu.triton" in text
    assert "mosaic_gpu" not in text


def test_gradients_are_xla_attention_gradients():
    """The custom VJP (kernel forward, dense XLA backward) lets training differentiate."""
    q, k, v = qkv(8, 2, 4, 2, 20, 20, 16, jnp.float32)
    w = jnp.asarray(np.random.default_rng(9).standard_normal(q.shape), jnp.float32)
    pol = masks.block_diff(10, 4, 2)

    def loss(attn):
        return lambda q, k, v: jnp.sum(attn(q, k, v) * w)

    kern = loss(lambda q, k, v: block_attention(q, k, v, pol, sm_scale=0.25, config=SMALL))
    dense = loss(lambda q, k, v: xla_attention(q, k, v, pol, 0.25))
    got = jax.jit(jax.grad(kern, argnums=(0, 1, 2)))(q, k, v)
    want = jax.jit(jax.grad(dense, argnums=(0, 1, 2)))(q, k, v)
    for g, r in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-5, rtol=1e-5)
