"""Static cache operations against numpy."""

import numpy as np
import jax.numpy as jnp

from nemodiff_jax.model.cache import KVCache, write_window
from nemodiff_jax.model.config import NLDConfig


def test_write_window_per_row_offsets():
    rng = np.random.default_rng(0)
    cache = rng.normal(size=(3, 2, 10, 4)).astype(np.float32)
    win = rng.normal(size=(3, 2, 3, 4)).astype(np.float32)
    start = np.array([0, 4, 7])
    got = np.asarray(write_window(jnp.asarray(cache), jnp.asarray(win), jnp.asarray(start, jnp.int32)))
    want = cache.copy()
    for b, s in enumerate(start):
        want[b, :, s : s + 3] = win[b]
    np.testing.assert_array_equal(got, want)


def test_keep_strided_compacts_row_heads():
    cfg = NLDConfig.preset("tiny").replace(num_layers=2, num_kv_heads=1, head_dim=2)
    cache = KVCache.init(cfg, 2, 24)
    rng = np.random.default_rng(1)
    k = rng.normal(size=cache.k.shape).astype(np.float32)
    v = rng.normal(size=cache.v.shape).astype(np.float32)
    cache = cache.replace(k=jnp.asarray(k), v=jnp.asarray(v))
    start = np.array([2, 5])
    out = cache.keep_strided(jnp.asarray(start, jnp.int32), count=3, stride=4)
    for b, s in enumerate(start):
        for i in range(3):
            np.testing.assert_array_equal(np.asarray(out.k)[:, b, :, s + i], k[:, b, :, s + 4 * i])
            np.testing.assert_array_equal(np.asarray(out.v)[:, b, :, s + i], v[:, b, :, s + 4 * i])
        np.testing.assert_array_equal(np.asarray(out.k)[:, b, :, :s], k[:, b, :, :s])


def test_length_moves_only_the_index():
    cache = KVCache.init(NLDConfig.preset("tiny"), 2, 8)
    c2 = cache.with_length(5)
    assert c2.k is cache.k and list(np.asarray(c2.length)) == [5, 5]
