"""The whole model with attention_impl="pallas" (interpret mode on CPU) equals "xla"."""

import numpy as np
import pytest
import jax.numpy as jnp

import nemodiff_jax as nd
from nemodiff_jax.model import masks
from nemodiff_jax.model.cache import KVCache
from nemodiff_jax.model.config import NLDConfig

CFG = NLDConfig.preset("tiny").replace(num_layers=2, vocab_size=64, original_max_position_embeddings=8)


@pytest.fixture(scope="module")
def models():
    params = nd.init_params(CFG, seed=3)
    return nd.Model(CFG, params), nd.Model(CFG.replace(attention_impl="pallas"), params)


@pytest.mark.parametrize("mode", ["causal", "bidirectional"])
def test_forward_logits_equal(models, mode):
    xla, pallas = models
    ids = np.random.default_rng(0).integers(0, 64, (2, 21))
    a = np.asarray(nd.forward_logits(xla, ids, mode))
    b = np.asarray(nd.forward_logits(pallas, ids, mode))
    np.testing.assert_allclose(a, b, atol=2e-5)


@pytest.mark.parametrize("layout", ["bidirectional", "quadratic"])
def test_cached_windows_equal(models, layout):
    xla, pallas = models
    prompt = jnp.asarray(np.random.default_rng(1).integers(0, 64, (2, 9)))
    outs = []
    for m in models:
        cache = KVCache.init(m.config, 2, 64)
        zero = jnp.zeros(2, jnp.int32)
        pos = jnp.broadcast_to(jnp.arange(9), (2, 9))
        _, cache = nd.forward(m.params, m.config, prompt, pos, masks.causal(zero, 9), cache)
        cache = cache.with_length(jnp.array([9, 6]))
        if layout == "bidirectional":
            win = jnp.asarray(np.random.default_rng(2).integers(0, 64, (2, 8)))
            pos = cache.length[:, None] + jnp.arange(8)[None]
            pol = masks.bidirectional(cache.length, 8)
        else:
            b = 3
            win = jnp.asarray(np.random.default_rng(2).integers(0, 64, (2, b * (b + 1))))
            slot = jnp.arange(b * (b + 1))
            pos = cache.length[:, None] + (slot // (b + 1) + slot % (b + 1))[None]
            pol = masks.quadratic(cache.length, b)
        logits, _ = nd.forward(m.params, m.config, win, pos, pol, cache)
        outs.append(np.asarray(logits))
    np.testing.assert_allclose(outs[0], outs[1], atol=2e-5)
