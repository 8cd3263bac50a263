"""The joint objective against an independent float64 numpy computation, and the corruption
processes' statistics (docs/ALGORITHMS.md, "Training objective")."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nemodiff_jax.model.forward import init_params
from nemodiff_jax.model.config import NLDConfig
from nemodiff_jax.train.objective import (
    ObjectiveConfig,
    corrupt_blockwise,
    corrupt_uniform,
    doubled_inputs,
    joint_loss,
    loss_from_logits,
)

CFG = NLDConfig(
    vocab_size=32, hidden_size=16, intermediate_size=24, num_layers=2, num_heads=2, num_kv_heads=1,
    head_dim=8, max_position_embeddings=64, rope_type="default", rope_theta=10000.0,
    llama4_scaling_beta=0.0, mask_token_id=3, block_size=4, dtype="float32",
)


# ---- an independent float64 numpy model + loss -------------------------------------------

def _rms(x, w, eps):
    return w * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def _rope(x, pos, theta):  # x [T, N, D], rotate-half convention
    d = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    ang = pos[:, None] * inv[None, :]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
    rot = np.concatenate([-x[..., d // 2:], x[..., : d // 2]], -1)
    return x * cos[:, None, :] + rot * sin[:, None, :]


def _block_diff_allowed(length, block):
    """docs/ALGORITHMS.md, "Training objective" written out with explicit loops."""
    allowed = np.zeros((2 * length, 2 * length), bool)
    for q in range(2 * length):
        for k in range(2 * length):
            qc, kc = q >= length, k >= length
            qp, kp = q % length, k % length
            if not qc and not kc:
                allowed[q, k] = qp // block == kp // block
            elif not qc and kc:
                allowed[q, k] = kp // block < qp // block
            elif qc and kc:
                allowed[q, k] = kp <= qp
    return allowed


def _np_forward(p, tokens, pos, allowed):
    c = CFG
    x = p["embed_tokens"][tokens]
    lay = p["layers"]
    for i in range(c.num_layers):
        h = _rms(x, lay["input_layernorm"]["scale"][i], c.rms_norm_eps)
        q = np.einsum("th,hnd->tnd", h, lay["self_attn"]["q_proj"][i])
        k = np.einsum("th,hnd->tnd", h, lay["self_attn"]["k_proj"][i])
        v = np.einsum("th,hnd->tnd", h, lay["self_attn"]["v_proj"][i])
        q, k = _rope(q, pos, c.rope_theta), _rope(k, pos, c.rope_theta)
        rep = c.num_heads // c.num_kv_heads
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        s = np.einsum("qnd,knd->nqk", q, k) / np.sqrt(c.head_dim)
        s = np.where(allowed[None], s, -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        a = s / s.sum(-1, keepdims=True)
        o = np.einsum("nqk,knd->qnd", a, v)
        x = x + np.einsum("qnd,ndh->qh", o, lay["self_attn"]["o_proj"][i])
        h = _rms(x, lay["post_attention_layernorm"]["scale"][i], c.rms_norm_eps)
        g = h @ lay["mlp"]["gate_proj"][i]
        x = x + ((g / (1 + np.exp(-g))) * (h @ lay["mlp"]["up_proj"][i])) @ lay["mlp"]["down_proj"][i]
    x = _rms(x, p["norm"]["scale"], c.rms_norm_eps)
    return x @ p["diffusion_head"]


def _np_ce(logits, target):
    m = logits.max(-1, keepdims=True)
    logz = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
    return logz - np.take_along_axis(logits, target[..., None], -1)[..., 0]


def test_loss_matches_float64_numpy():
    params = init_params(CFG, 3)
    # Larger-than-init weights so the loss is far from ln V and mistakes show.
    params = jax.tree.map(lambda x: x * 4.0 if x.ndim > 1 else x, params)
    p64 = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    L = 8
    ids = np.array([[1, 9, 10, 11, 12, 13, 2, 0], [1, 20, 21, 22, 23, 24, 25, 2]], np.int32)
    loss_mask = np.array([[0, 0, 0, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1, 1, 1]], np.int32)
    masked = np.array([[0, 0, 0, 1, 0, 1, 1, 0], [0, 0, 1, 0, 1, 1, 1, 0]], bool)
    p_mask = np.array([[0.4] * L, [0.7] * L], np.float32)
    obj = ObjectiveConfig(ar_weight=1.0, diff_weight=0.3, block_size=4)

    tokens, pos = doubled_inputs(jnp.asarray(ids), jnp.asarray(masked), CFG.mask_token_id)
    from nemodiff_jax.model import masks
    from nemodiff_jax.model.forward import forward

    logits, _ = forward(params, CFG, tokens, pos, masks.block_diff(L, 4, 2), None, jnp.float32(0.0))
    loss, metrics = loss_from_logits(logits, jnp.asarray(ids), jnp.asarray(loss_mask, bool), jnp.asarray(masked),
                                     jnp.asarray(p_mask), obj)

    allowed = _block_diff_allowed(L, 4)
    diff_sum = ar_sum = 0.0
    n_masked = n_ar = 0
    for b in range(2):
        x_t = np.where(masked[b], CFG.mask_token_id, ids[b])
        lg = _np_forward(p64, np.concatenate([x_t, ids[b]]), np.concatenate([np.arange(L), np.arange(L)]).astype(np.float64), allowed)
        ce_d = _np_ce(lg[:L], ids[b])
        diff_sum += float(np.sum(ce_d[masked[b]] / np.float64(p_mask[b][masked[b]])))
        n_masked += int(masked[b].sum())
        ce_a = _np_ce(lg[L:-1], ids[b, 1:])
        tgt = loss_mask[b, 1:] > 0
        ar_sum += float(np.sum(ce_a[tgt]))
        n_ar += int(tgt.sum())
    expected = (1.0 * ar_sum + 0.3 * diff_sum) / (n_masked + n_ar)
    np.testing.assert_allclose(float(loss), expected, rtol=2e-5)
    np.testing.assert_allclose(float(metrics["ar_loss"]), ar_sum / n_ar, rtol=2e-5)
    assert float(loss) > 1.0  # not a degenerate example


def test_uniform_corruption_statistics():
    eligible = np.ones((4096, 64), bool)
    eligible[:, :16] = False  # a "prompt"
    masked, p = corrupt_uniform(jax.random.key(0), jnp.asarray(eligible), eps=1e-3)
    masked, p = np.asarray(masked), np.asarray(p)
    assert not masked[:, :16].any()
    assert (p >= 1e-3).all() and (p <= 1.0).all()
    assert np.allclose(p, p[:, :1])  # one ratio per sequence
    frac = masked[:, 16:].mean(1)
    assert abs(np.mean(frac - p[:, 0])) < 0.01  # E[masked fraction | p] = p
    assert abs(p[:, 0].mean() - 0.5) < 0.03  # p ~ U(eps, 1)


def test_blockwise_corruption_statistics():
    block, n_rows = 16, 4096
    eligible = np.ones((n_rows, 4 * block), bool)
    eligible[:, :5] = False
    masked, p = corrupt_blockwise(jax.random.key(1), jnp.asarray(eligible), block, 1e-3, 0.25)
    masked, p = np.asarray(masked).reshape(n_rows, 4, block), np.asarray(p).reshape(n_rows, 4, block)
    elig = eligible.reshape(n_rows, 4, block)
    assert not (masked & ~elig).any()
    m = p[..., 0]
    assert np.allclose(p, m[..., None])  # one ratio per block
    assert (m >= 1e-3).all() and (m <= 1.0).all()
    # exactly round(m * n_eligible) masked in every block
    np.testing.assert_array_equal(masked.sum(-1), np.round(m * elig.sum(-1)).astype(int))
    # position dependence: at low ratios later positions are favoured (weights lambda (1-m) i)
    low = (m < 0.3)[..., None] & elig
    idx = np.broadcast_to(np.arange(block), masked.shape)
    assert idx[low & masked].mean() > idx[low].mean() + 1.0
    hi = (m > 0.95)[..., None] & elig
    assert abs(idx[hi & masked].mean() - idx[hi].mean()) < 0.5


def test_sft_prompts_never_masked_nor_scored():
    """Prompt tokens stay clean in x_t, and their logits do not affect the loss."""
    L, B = 24, 64
    rng = np.random.default_rng(0)
    ids = rng.integers(8, CFG.vocab_size, (B, L)).astype(np.int32)
    start = rng.integers(1, L - 2, (B, 1))
    loss_mask = (np.arange(L)[None] >= start).astype(np.int32)
    obj = ObjectiveConfig(block_size=4)
    for seed in range(8):
        masked, p = corrupt_uniform(jax.random.key(seed), jnp.asarray(loss_mask, bool))
        tokens, _ = doubled_inputs(jnp.asarray(ids), masked, CFG.mask_token_id)
        x_t = np.asarray(tokens[:, :L])
        assert (x_t[loss_mask == 0] == ids[loss_mask == 0]).all()
        assert not np.asarray(masked)[loss_mask == 0].any()
    logits = jax.random.normal(jax.random.key(9), (B, 2 * L, CFG.vocab_size))
    base, _ = loss_from_logits(logits, jnp.asarray(ids), jnp.asarray(loss_mask, bool), masked, p, obj)
    # Perturb diffusion logits at prompt positions and causal logits whose target is a prompt token.
    prompt = np.asarray(loss_mask == 0)
    ar_prompt_target = np.concatenate([prompt[:, 1:], np.ones((B, 1), bool)], 1)
    noise = jax.random.normal(jax.random.key(10), logits.shape) * 5
    sel = jnp.asarray(np.concatenate([prompt, ar_prompt_target], 1))[..., None]
    perturbed, _ = loss_from_logits(jnp.where(sel, logits + noise, logits), jnp.asarray(ids),
                                    jnp.asarray(loss_mask, bool), masked, p, obj)
    assert float(perturbed) == pytest.approx(float(base), rel=1e-6)


def test_joint_loss_runs_end_to_end():
    params = init_params(CFG, 0)
    ids = jnp.asarray(np.random.default_rng(1).integers(8, 32, (2, 8)), jnp.int32)
    loss, m = joint_loss(params, CFG, ObjectiveConfig(block_size=4), ids, jnp.ones((2, 8), jnp.int32), jax.random.key(0))
    assert np.isfinite(float(loss)) and abs(float(m["ar_loss"]) - np.log(32)) < 0.5


# ---- aligned training blocks (issue 15): a per-row block offset -----------------------------

def _aligned_allowed(length, block, offset):
    """The block-diff mask with blocks starting at ``offset + m * block`` (m any integer), by loops."""
    starts = [s for s in range(offset % block - block, length + block, block)]

    def blk(p):  # index of the last block start <= p, counted by hand
        return sum(1 for s in starts if s <= p)

    allowed = np.zeros((2 * length, 2 * length), bool)
    for q in range(2 * length):
        for k in range(2 * length):
            qc, kc = q >= length, k >= length
            qp, kp = q % length, k % length
            if not qc and not kc:
                allowed[q, k] = blk(qp) == blk(kp)
            elif not qc and kc:
                allowed[q, k] = blk(kp) < blk(qp)
            elif qc and kc:
                allowed[q, k] = kp <= qp
    return allowed


def test_block_diff_offset_matches_loop_and_is_traced():
    from nemodiff_jax.model import masks

    L, block = 11, 4
    offsets = np.array([0, 1, 3, 4, 6, 10], np.int32)
    build = jax.jit(lambda off: masks.build_mask(masks.block_diff(L, block, len(offsets), offset=off), 2 * L, 2 * L))
    got = np.asarray(build(jnp.asarray(offsets)))
    for r, off in enumerate(offsets):
        np.testing.assert_array_equal(got[r], _aligned_allowed(L, block, int(off)), err_msg=f"offset {off}")
    np.testing.assert_array_equal(got[0], _block_diff_allowed(L, block))  # offset 0 is the old mask
    build(jnp.asarray(offsets[::-1].copy()))
    assert build._cache_size() == 1  # other offsets, no recompile


def test_block_offsets_is_the_first_supervised_position():
    from nemodiff_jax.train.objective import block_offsets

    mask = np.array([[0, 0, 1, 1, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [0, 0, 0, 0, 1]], bool)
    expected = [next((j for j, v in enumerate(row) if v), 0) for row in mask]
    assert np.asarray(block_offsets(jnp.asarray(mask))).tolist() == expected


def test_aligned_loss_matches_float64_numpy():
    from nemodiff_jax.model import masks
    from nemodiff_jax.model.forward import forward
    from nemodiff_jax.train.objective import block_offsets

    params = jax.tree.map(lambda x: x * 4.0 if x.ndim > 1 else x, init_params(CFG, 5))
    p64 = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    L = 8
    ids = np.array([[1, 9, 10, 11, 12, 13, 2, 0], [1, 20, 21, 22, 23, 24, 25, 2]], np.int32)
    loss_mask = np.array([[0, 0, 0, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1, 1, 1]], np.int32)
    masked = np.array([[0, 0, 0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 0, 1, 1, 1]], bool)
    tokens, pos = doubled_inputs(jnp.asarray(ids), jnp.asarray(masked), CFG.mask_token_id)
    off = block_offsets(jnp.asarray(loss_mask, bool))
    logits, _ = forward(params, CFG, tokens, pos, masks.block_diff(L, 4, 2, offset=off), None, jnp.float32(0.0))
    for b, start in enumerate([3, 2]):
        x_t = np.where(masked[b], CFG.mask_token_id, ids[b])
        lg = _np_forward(p64, np.concatenate([x_t, ids[b]]), np.concatenate([np.arange(L), np.arange(L)]).astype(np.float64),
                         _aligned_allowed(L, 4, start))
        np.testing.assert_allclose(np.asarray(logits[b]), lg, rtol=2e-4, atol=2e-4)


# ---- <eos> fill past the answer and span corruption (issue 15, model v3) ---------------------

def _fill_by_hand(ids, loss_mask, block, eos):
    """Positions after the answer up to the end of its last aligned block -> eos, by loops."""
    out, fill = ids.copy(), np.zeros(ids.shape, bool)
    for r in range(ids.shape[0]):
        sup = [j for j in range(ids.shape[1]) if loss_mask[r, j]]
        if not sup:
            continue
        start, end = sup[0], sup[-1] + 1
        block_end = start
        while block_end < end:
            block_end += block
        for j in range(end, min(block_end, ids.shape[1])):
            out[r, j], fill[r, j] = eos, True
    return out, fill


def test_fill_after_eos_matches_loop():
    from nemodiff_jax.train.objective import fill_after_eos

    rng = np.random.default_rng(3)
    L, block = 20, 4
    ids = rng.integers(8, 32, (40, L)).astype(np.int32)
    loss_mask = np.zeros((40, L), np.int32)
    for r in range(40):
        s = int(rng.integers(0, L))
        e = int(rng.integers(s, L + 1))
        loss_mask[r, s:e] = 1
    loss_mask[0] = 0  # no answer
    loss_mask[1] = 1  # a corpus window
    got_ids, got_fill = fill_after_eos(jnp.asarray(ids), jnp.asarray(loss_mask, bool), block, 2)
    want_ids, want_fill = _fill_by_hand(ids, loss_mask, block, 2)
    np.testing.assert_array_equal(np.asarray(got_ids), want_ids)
    np.testing.assert_array_equal(np.asarray(got_fill), want_fill)
    assert want_fill.any() and not want_fill[:2].any()


def test_corrupt_span_is_one_run_inside_the_answer():
    from nemodiff_jax.train.objective import corrupt_span

    rng = np.random.default_rng(4)
    L, B = 30, 256
    loss_mask = np.zeros((B, L), bool)
    for r in range(B):
        s = int(rng.integers(0, L - 1))
        loss_mask[r, s:int(rng.integers(s + 1, L + 1))] = True
    got = np.asarray(corrupt_span(jax.random.key(0), jnp.asarray(loss_mask)))
    lengths = []
    for r in range(B):
        idx = np.flatnonzero(got[r])
        n = int(loss_mask[r].sum())
        if n < 2:
            assert idx.size == 0
            continue
        assert 4 <= idx.size <= 8 or idx.size == n - 1 < 4  # 4..8 tokens, fewer only when the answer is short
        assert (np.diff(idx) == 1).all()  # contiguous
        assert loss_mask[r, idx].all() and idx[0] != np.flatnonzero(loss_mask[r])[0]  # never the first
        lengths.append(idx.size)
    assert set(lengths) >= {4, 5, 6, 7, 8}


def test_eos_fill_scores_fill_by_diffusion_only():
    """With eos_fill the fill positions (6..9: the answer's 8-token block) join the diffusion
    targets, never the AR ones: the AR loss and count are the plain objective's."""
    params = init_params(CFG, 0)
    L = 12
    ids = jnp.asarray([[1, 9, 10, 11, 12, 2, 0, 0, 0, 0, 0, 0]], jnp.int32)
    loss_mask = jnp.asarray([[0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0]], jnp.int32)
    plain = ObjectiveConfig(block_size=8, align_blocks=True)
    filled = ObjectiveConfig(block_size=8, align_blocks=True, eos_fill=True)
    more = 0
    for seed in range(6):
        key = jax.random.key(seed)
        _, m0 = joint_loss(params, CFG, plain, ids, loss_mask, key)
        _, m1 = joint_loss(params, CFG, filled, ids, loss_mask, key)
        assert float(m1["ar_loss"]) == pytest.approx(float(m0["ar_loss"]), rel=1e-6)
        assert float(m1["n_ar"]) == float(m0["n_ar"])
        assert float(m1["n_masked"]) <= float(m0["n_masked"]) + 4  # the fill is positions 6..9 only
        more += float(m1["n_masked"]) > float(m0["n_masked"])
    assert more  # and some draws do mask it
    with pytest.raises(ValueError, match="eos_fill needs align_blocks"):
        ObjectiveConfig(eos_fill=True)


def test_span_align_starts_span_rows_block_at_the_span():
    """span_align: every span row's block offset is its first masked position (the infill
    decode's window start); the loss is the float64 numpy forward under that mask."""
    from nemodiff_jax.train.objective import corruption

    L, block = 16, 4
    ids = np.array([[1, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 2, 0, 0, 0],
                    [1, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 20, 21, 2]], np.int32)
    loss_mask = np.array([[0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                          [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]], np.int32)
    elig = jnp.asarray(loss_mask, bool)
    aligned = ObjectiveConfig(block_size=block, align_blocks=True, span_fraction=1.0, span_align=True)
    plain = ObjectiveConfig(block_size=block, align_blocks=True, span_fraction=1.0)
    starts = set()
    for seed in range(8):
        key = jax.random.key(seed)
        masked, _, off = corruption(key, elig, elig, aligned)
        masked2, _, off2 = corruption(key, elig, elig, plain)
        np.testing.assert_array_equal(np.asarray(masked), np.asarray(masked2))  # same draw, only the offset moves
        for r in range(2):
            first_masked = int(np.flatnonzero(np.asarray(masked[r]))[0])
            assert int(off[r]) == first_masked
            assert int(off2[r]) == int(np.flatnonzero(loss_mask[r])[0])
            starts.add(first_masked % block)
    assert len(starts) > 1  # offsets that are not the answer-aligned ones

    params = jax.tree.map(lambda x: x * 4.0 if x.ndim > 1 else x, init_params(CFG, 6))
    p64 = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    key = jax.random.key(3)
    loss, _ = joint_loss(params, CFG, aligned, jnp.asarray(ids), jnp.asarray(loss_mask), key)
    masked = np.asarray(corruption(key, elig, elig, aligned)[0])
    diff_sum = ar_sum = 0.0
    n_masked = n_ar = 0
    for b in range(2):
        start = int(np.flatnonzero(masked[b])[0])
        x_t = np.where(masked[b], CFG.mask_token_id, ids[b])
        lg = _np_forward(p64, np.concatenate([x_t, ids[b]]), np.concatenate([np.arange(L), np.arange(L)]).astype(np.float64),
                         _aligned_allowed(L, block, start))
        diff_sum += float(np.sum(_np_ce(lg[:L], ids[b])[masked[b]]))  # span rows: p_mask = 1
        n_masked += int(masked[b].sum())
        tgt = loss_mask[b, 1:] > 0
        ar_sum += float(np.sum(_np_ce(lg[L:-1], ids[b, 1:])[tgt]))
        n_ar += int(tgt.sum())
    np.testing.assert_allclose(float(loss), (ar_sum + 0.3 * diff_sum) / (n_masked + n_ar), rtol=2e-5)
    with pytest.raises(ValueError, match="span_align needs"):
        ObjectiveConfig(align_blocks=True, span_align=True)
