"""Chunked prefill and ``forward(logits_at=...)``: the same numbers as the one-shot forward,
without its ``[B, P, V]`` logits and ``[B, H, P, T]`` scores."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nemodiff_jax.model import masks
from nemodiff_jax.model.forward import final_logits, forward, forward_hidden
from nemodiff_jax.model.cache import KVCache
from nemodiff_jax.decode.common import chunk_starts, positions_from, prefill, prefill_with_window

from .tiny import prompts, tiny_model

LENGTHS = (37, 5, 64, 50)  # rows of different lengths; the padded width is 64
WIDTH = 64
CACHE = 80


def one_shot(params, cfg, prompt, prompt_len, cache):
    """The prefill as it was: one causal forward over the whole padded prompt, all logits."""
    b, p = prompt.shape
    zero = jnp.zeros((b,), jnp.int32)
    logits, cache = forward(params, cfg, prompt, positions_from(zero, p), masks.causal(zero, p, b), cache, 0.0)
    last = jnp.take_along_axis(logits, (prompt_len - 1)[:, None, None], axis=1)[:, 0]
    return last, cache.with_length(prompt_len)


@functools.partial(jax.jit, static_argnames=("cfg", "chunk"))
def chunked(params, cfg, prompt, prompt_len, cache, *, chunk):
    return prefill(params, cfg, prompt, prompt_len, cache, chunk=chunk)


def padded(rows, width=WIDTH):
    arr = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        arr[i, : len(r)] = r
    return jnp.asarray(arr), jnp.asarray([len(r) for r in rows], jnp.int32)


def test_chunk_starts():
    assert chunk_starts(64, 512) == (64, 1)
    assert chunk_starts(64, 16) == (16, 4)
    assert chunk_starts(64, 24) == (24, 3)  # last chunk starts at 40, recomputing 40..47
    with pytest.raises(ValueError):
        chunk_starts(64, 0)


@pytest.mark.parametrize("chunk", [1, 7, 16, 24, 64, 512])
def test_chunked_prefill_equals_one_shot(chunk):
    m = tiny_model()
    cfg = m.config
    prompt, plen = padded(prompts(LENGTHS))
    fresh = KVCache.init(cfg, len(LENGTHS), CACHE)
    ref_last, ref_cache = one_shot(m.params, cfg, prompt, plen, fresh)
    last, cache = chunked(m.params, cfg, prompt, plen, fresh, chunk=chunk)
    assert last.shape == (len(LENGTHS), cfg.vocab_size)
    np.testing.assert_allclose(last, ref_last, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(cache.length, plen)
    # Every prompt slot (padding included: the decoders overwrite it) holds the same K/V;
    # the slots past the prompt are untouched.
    np.testing.assert_allclose(cache.k[:, :, :, :WIDTH], ref_cache.k[:, :, :, :WIDTH], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cache.v[:, :, :, :WIDTH], ref_cache.v[:, :, :, :WIDTH], rtol=1e-5, atol=1e-5)
    assert not np.any(np.asarray(cache.k[:, :, :, WIDTH:]))


def test_chunked_prefill_prompt_not_a_chunk_multiple():
    m = tiny_model(1)
    cfg = m.config
    lengths = (45, 3, 29)
    prompt, plen = padded(prompts(lengths, seed=3), width=45)  # odd width, no bucket
    fresh = KVCache.init(cfg, len(lengths), 48)
    ref_last, ref_cache = one_shot(m.params, cfg, prompt, plen, fresh)
    for chunk in (8, 10, 16):
        last, cache = chunked(m.params, cfg, prompt, plen, fresh, chunk=chunk)
        np.testing.assert_allclose(last, ref_last, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(cache.k[:, :, :, :45], ref_cache.k[:, :, :, :45], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(cache.v[:, :, :, :45], ref_cache.v[:, :, :, :45], rtol=1e-5, atol=1e-5)


def test_short_rows_in_a_wide_bucket_skip_the_chunks_past_them():
    """A slot refill pads its one prompt to the queue's width: only the chunks it needs run."""
    m = tiny_model(1)
    cfg = m.config
    (row,) = prompts((20,), seed=4)
    prompt, plen = padded([row], width=WIDTH)  # 20 tokens in a 64-wide bucket: chunks of 32
    fresh = KVCache.init(cfg, 1, CACHE)
    ref_last, ref_cache = one_shot(m.params, cfg, *padded([row], width=20), KVCache.init(cfg, 1, CACHE))
    last, cache = chunked(m.params, cfg, prompt, plen, fresh, chunk=512)
    np.testing.assert_allclose(last, ref_last, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(cache.k[:, :, :, :20], ref_cache.k[:, :, :, :20], rtol=1e-5, atol=1e-5)
    assert np.any(np.asarray(cache.k[:, :, :, 20:32]))  # the first chunk's padding slots: written
    assert not np.any(np.asarray(cache.k[:, :, :, 32:]))  # the second chunk never ran


def test_forward_logits_at_equals_gathered_full_logits():
    m = tiny_model()
    cfg = m.config
    prompt, plen = padded(prompts(LENGTHS))
    b, p = prompt.shape
    zero = jnp.zeros((b,), jnp.int32)
    args = (m.params, cfg, prompt, positions_from(zero, p), masks.causal(zero, p, b))
    full, _ = forward(*args)
    idx = plen - 1
    at, _ = forward(*args, logits_at=idx)
    np.testing.assert_allclose(at, np.take_along_axis(np.asarray(full), np.asarray(idx)[:, None, None], 1)[:, 0],
                               rtol=1e-5, atol=1e-5)
    many = jnp.stack([idx, jnp.zeros_like(idx), idx // 2], axis=1)
    at2, _ = forward(*args, logits_at=many)
    assert at2.shape == (b, 3, cfg.vocab_size)
    np.testing.assert_allclose(at2, np.take_along_axis(np.asarray(full), np.asarray(many)[:, :, None], 1),
                               rtol=1e-5, atol=1e-5)
    hidden, _ = forward_hidden(*args)
    np.testing.assert_allclose(final_logits(m.params, cfg, hidden), full, rtol=1e-5, atol=1e-5)


def test_prefill_with_window_equals_the_mixed_mask_forward():
    """Quadratic speculation's bootstrap: [prompt, M x B] under the mixed mask, one shot."""
    m = tiny_model(2)
    cfg = m.config
    rows = prompts(LENGTHS, seed=5)
    prompt, plen = padded(rows)
    b, p = prompt.shape
    bk = 4
    width = p + bk
    idx = jnp.arange(width, dtype=jnp.int32)[None, :]
    pl = plen[:, None]
    padded_w = jnp.concatenate([prompt, jnp.zeros((b, bk), jnp.int32)], axis=1)
    tokens = jnp.where(idx < pl, padded_w, jnp.where(idx < pl + bk, cfg.mask_token_id, cfg.pad_token_id))
    policy = masks.mixed(jnp.zeros((b,), jnp.int32), plen, plen + bk, b)
    fresh = KVCache.init(cfg, b, CACHE)
    ref, ref_cache = forward(m.params, cfg, tokens, jnp.broadcast_to(idx, (b, width)), policy, fresh, 0.0)
    src = pl + jnp.arange(bk, dtype=jnp.int32)[None, :]
    window = jnp.full((b, bk), cfg.mask_token_id, jnp.int32)
    for chunk in (16, 24, 512):
        last, win, cache = prefill_with_window(m.params, cfg, prompt, plen, fresh, window, chunk=chunk)
        np.testing.assert_allclose(last, np.take_along_axis(np.asarray(ref), np.asarray(pl - 1)[..., None], 1)[:, 0],
                                   rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(win, np.take_along_axis(np.asarray(ref), np.asarray(src)[..., None], 1),
                                   rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(cache.length, plen)
        for i, n in enumerate(LENGTHS):
            np.testing.assert_allclose(cache.k[:, i, :, :n], ref_cache.k[:, i, :, :n], rtol=1e-5, atol=1e-5)


def with_lora(model):
    """A non-zero draft LoRA (``lora_b`` starts at zero), so that where it is on shows."""
    rng = np.random.default_rng(3)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.asarray(rng.normal(size=x.shape), x.dtype) if "lora_b" in jax.tree_util.keystr(path) else x,
        model.params)
    return model.replace(params=params)


@pytest.mark.parametrize("lengths", [LENGTHS, (20, 3, 31)])
def test_prefill_with_window_per_row_lora_on_the_window_only(lengths):
    """Linear speculation's start: per row, one forward over ``[prompt, M x B]`` without a
    cache, the prompt causal with the LoRA off and the masks bidirectional with the row's LoRA.
    LENGTHS has prompts longer than one window (their head goes through the chunked prefill);
    the second case fits one window."""
    m = with_lora(tiny_model(2, lora_rank=4))
    cfg = m.config
    rows = prompts(lengths, seed=6)
    prompt, plen = padded(rows, width=64 if max(lengths) > 32 else 32)
    b, bk = len(rows), 4
    lora = jnp.asarray([1.0, 0.0, 1.0, 0.5][:b], jnp.float32)
    window = jnp.full((b, bk), cfg.mask_token_id, jnp.int32)
    last, win, cache = jax.jit(prefill_with_window, static_argnums=(1,))(
        m.params, cfg, prompt, plen, KVCache.init(cfg, b, CACHE), window, lora=lora)
    logits = jnp.concatenate([last[:, None], win], axis=1)
    assert logits.shape == (b, 1 + bk, cfg.vocab_size)
    np.testing.assert_array_equal(cache.length, plen)
    w = prompt.shape[1] + bk  # one reference width: positions past a row's masks see nothing of it

    @jax.jit
    def reference(ids, n, gate):
        z, pos = jnp.zeros((1,), jnp.int32), jnp.arange(w, dtype=jnp.int32)[None]
        mixed, cache = forward(m.params, cfg, ids, pos, masks.mixed(z, n, n + bk, 1), KVCache.init(cfg, 1, w), gate)
        causal, _ = forward(m.params, cfg, ids, pos, masks.causal(z, w, 1), None, 0.0)
        return mixed, cache, causal

    for i, row in enumerate(rows):
        n = len(row)
        ids = jnp.asarray([list(row) + [cfg.mask_token_id] * bk + [cfg.pad_token_id] * (w - n - bk)], jnp.int32)
        gate = jnp.asarray((np.arange(w) >= n) * float(lora[i]), jnp.float32)[None, :, None]
        ref, ref_cache, causal = reference(ids, jnp.asarray([n], jnp.int32), gate)
        np.testing.assert_allclose(logits[i], ref[0, n - 1:n + bk], rtol=1e-5, atol=1e-4)
        # The prompt's K/V are the AR model's (what the verify pass and later cycles attend to).
        np.testing.assert_allclose(cache.k[:, i, :, :n], ref_cache.k[:, 0, :, :n], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(cache.v[:, i, :, :n], ref_cache.v[:, 0, :, :n], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(logits[i, 0], causal[0, n - 1], rtol=1e-5, atol=1e-4)
