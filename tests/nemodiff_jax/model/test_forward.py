"""The forward's LoRA switch: a switch that is off when traced (a Python 0, 0.0, False) emits no
adapter matmuls, through forward's own jit and inside a decode loop; a traced switch emits them
and an on switch changes the logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import nemodiff_jax as nd
from nemodiff_jax.decode.engine import decode
from nemodiff_jax.decode.generate import prepare
from nemodiff_jax.model import masks
from nemodiff_jax.model.cache import KVCache
from tests.nemodiff_jax.decode.tiny import tiny_model


def _with_lora():
    """The tiny model with a rank-4 draft LoRA whose B is not zero, so the adapter shows."""
    m = tiny_model(lora_rank=4)
    params = dict(m.params)
    layers = dict(params["layers"])
    attn = dict(layers["self_attn"])
    attn["lora_b"] = jax.random.normal(jax.random.key(1), attn["lora_b"].shape, attn["lora_b"].dtype)
    layers["self_attn"] = attn
    params["layers"] = layers
    return m.replace(params=params)


def _step(model, lora):
    """A jitted 1-token forward over a cache and its lowered text (dots counted pre-optimisation)."""
    cfg = model.config
    cache = KVCache.for_params(model.params, cfg, 1, 16, jnp.float32).with_length(jnp.full((1,), 5, jnp.int32))
    tok, pos = jnp.full((1, 1), 7, jnp.int32), jnp.full((1, 1), 5, jnp.int32)

    def f(p, c, z):
        return nd.forward(p, cfg, tok, pos, masks.causal(c.length, 1, 1), c, z if lora == "traced" else lora)[0]

    z = jnp.float32(0.0)
    return jax.jit(f).lower(model.params, cache, z).as_text(), np.asarray(jax.jit(f)(model.params, cache, z))


def test_known_off_switch_emits_no_adapter_matmuls():
    plain, lora = tiny_model(), _with_lora()
    base = _step(plain, 0)[0].count("dot_general")
    traced_text, traced_out = _step(lora, "traced")
    assert traced_text.count("dot_general") == base + 2  # A then B, once in the scanned layer body
    for off in (0, 0.0, False):
        text, out = _step(lora, off)
        assert text.count("dot_general") == base, off
        np.testing.assert_allclose(out, traced_out, rtol=0, atol=1e-6)  # traced 0 x delta: the same logits
    on = np.asarray(nd.forward(lora.params, lora.config, jnp.full((1, 3), 7, jnp.int32), jnp.arange(3)[None],
                               masks.causal(jnp.zeros((1,), jnp.int32), 3, 1), None, 1.0)[0])
    off = np.asarray(nd.forward(lora.params, lora.config, jnp.full((1, 3), 7, jnp.int32), jnp.arange(3)[None],
                                masks.causal(jnp.zeros((1,), jnp.int32), 3, 1), None, 0)[0])
    assert np.abs(on - off).max() > 1e-3  # the switch on is not a no-op: the detector would see a skip


def test_ar_decode_program_has_no_adapter_matmuls():
    """AR never turns the draft LoRA on: its decode program holds exactly the dots of the same
    model without a LoRA (prefill and step)."""

    def dots(model):
        p = prepare(model, [[1, 5, 6, 7]], mode="ar", max_new_tokens=8)
        leaves, treedef = jax.tree.flatten(p.queue)
        run = jax.jit(lambda params, lv: decode(params, model.config, jax.tree.unflatten(treedef, lv), spec=p.spec))
        return run.lower(model.params, leaves).as_text().count("dot_general")

    assert dots(_with_lora()) == dots(tiny_model())
