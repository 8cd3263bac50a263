"""The two parameter layouts: the conversions are exact and inverse, every consumer (forward,
decode, quantize, sharding rules, the HF key map) reads either, and the per-layer layout is
the one whose compiled decode copies no weights, and (with its per-layer KV cache) no layer's K/V."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nemodiff_jax as nd
from nemodiff_jax.io.keymap import iter_hf_tensors
from nemodiff_jax.model import masks, sharding
from nemodiff_jax.model.cache import KVCache
from nemodiff_jax.model.layout import is_stacked, layer_keys, stack_layers, stacked_name, unstack_layers
from nemodiff_jax.model.quantize import quantize_params
from tests.nemodiff_jax.decode.tiny import ar_oracle, prompts, tiny_model


def _equal(a, b) -> bool:
    la, lb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    return [p for p, _ in la] == [p for p, _ in lb] and all(
        x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y)) for (_, x), (_, y) in zip(la, lb))


def test_unstack_and_stack_are_exact_inverses():
    params = tiny_model(lora_rank=4).params
    per = unstack_layers(params)
    assert is_stacked(params) and not is_stacked(per)
    assert layer_keys(per) == ["layers_0", "layers_1"]
    for i in range(2):  # layer i's arrays are the stack's row i
        np.testing.assert_array_equal(per[f"layers_{i}"]["mlp"]["up_proj"], params["layers"]["mlp"]["up_proj"][i])
        np.testing.assert_array_equal(per[f"layers_{i}"]["self_attn"]["lora_a"], params["layers"]["self_attn"]["lora_a"][i])
    assert _equal(stack_layers(per), params)
    assert unstack_layers(per) is per and stack_layers(params) is params  # already in that layout
    with pytest.raises(ValueError, match="neither 'layers'"):
        is_stacked({"embed_tokens": 0})


def test_consume_frees_the_stacked_leaves():
    cfg = tiny_model().config
    src = nd.init_params(cfg, 3)
    ref = jax.tree.map(np.asarray, src)
    per = unstack_layers(src, consume=True)
    assert src == {}  # the caller's tree was handed over, leaf by leaf
    assert _equal(stack_layers(per), ref)
    assert _equal(nd.init_params(cfg, 3, stacked=False), per)


def test_abstract_params_per_layer_shapes():
    cfg = tiny_model().config
    abstract = nd.abstract_params(cfg, stacked=False)
    real = nd.init_params(cfg, 0, stacked=False)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), abstract) == jax.tree.map(lambda a: (a.shape, a.dtype), real)


def test_decode_on_per_layer_weights_equals_brute_force():
    """Greedy AR on the per-layer layout gives the tokens of the cacheless oracle run on the
    stacked (scanned) model: two different layer loops, one answer. (The LoRA path per layer is
    checked against the stacked logits in test_load_per_layer_on_request; the decode modes sit
    above the forward and do not see the layout.)"""
    stacked = tiny_model()
    per = stacked.replace(params=unstack_layers(stacked.params))
    rows = prompts([5, 9, 3], seed=11)
    out = nd.generate(per, rows, mode="ar", max_new_tokens=10)
    for i, r in enumerate(rows):
        assert out.tokens[i] == ar_oracle(stacked, r, 10)[: len(out.tokens[i])]
        assert len(out.tokens[i]) == 10 or out.tokens[i][-1] == stacked.config.eos_token_id


def _copies(model) -> dict[str, list[str]]:
    """Compiled-HLO ops of a 1-token forward over a cache (a decode step) that copy a weight (a
    scan's slice of a stacked weight, or a transposed weight: ops named copy / slice / transpose
    with a weight's element count) or slice a layer's K/V out of the stacked cache (ops named
    slice with a layer's K/V count). The window's in-place writes (dynamic-update-slices) are
    not copies. The config's sizes make the counts unambiguous."""
    cfg = model.config
    cache = KVCache.for_params(model.params, cfg, 1, 16, jnp.float32).with_length(jnp.full((1,), 5, jnp.int32))
    tok, pos = jnp.full((1, 1), 3, jnp.int32), jnp.full((1, 1), 5, jnp.int32)
    # the cache donated, as the decode loop carries it: otherwise XLA copies the input to the output
    hlo = jax.jit(lambda p, c: nd.forward(p, cfg, tok, pos, masks.causal(c.length, 1, 1), c), donate_argnums=1).lower(
        model.params, cache).compile().as_text()
    h, i, q = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads * cfg.head_dim
    weights = {h * i, h * q, h * cfg.num_kv_heads * cfg.head_dim}
    layer_kv = cfg.num_kv_heads * 16 * cfg.head_dim
    found = {"weights": [], "cache": []}
    for line in hlo.splitlines():
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = \w+\[([\d,]*)\]", line)
        if not m or "update" in m.group(1) or not any(w in m.group(1) for w in ("copy", "slice", "transpose")):
            continue
        n = int(np.prod([int(x) for x in m.group(2).split(",") if x]))
        if n in weights:
            found["weights"].append(m.group(1))
        elif n == layer_kv and "slice" in m.group(1):
            found["cache"].append(m.group(1))
    return found


def test_per_layer_decode_copies_no_weights_and_slices_no_cache():
    """Per-layer weights with their per-layer cache: a decode step copies no weight (o_proj's
    transpose included) and slices no layer's K/V out of a stack. Stacked, the scan does both
    (the detector is shown to fire)."""
    cfg = tiny_model().config.replace(hidden_size=48, intermediate_size=80, num_heads=2, num_kv_heads=1,
                                      head_dim=24)
    assert len({48 * 80, 48 * 48, 48 * 24, 24 * 16}) == 4
    stacked = nd.Model(cfg, nd.init_params(cfg, 0))
    per = stacked.replace(params=unstack_layers(stacked.params))
    got = _copies(stacked)
    assert got["weights"] and got["cache"], got
    assert _copies(per) == {"weights": [], "cache": []}


def test_per_layer_cache_operations_match_the_stacked_cache():
    """crop-free cache operations (strided keep, slot refill, row broadcast) on the per-layer
    cache equal the stacked cache's, layer by layer; mixing layouts is refused by name."""
    from nemodiff_jax.decode.rows import fresh, put

    cfg = tiny_model().config
    rng = np.random.default_rng(4)
    stacked = KVCache.init(cfg, 3, 24)
    assert KVCache.for_params(nd.init_params(cfg, 0, stacked=False), cfg, 3, 24).per_layer
    k, v = (rng.normal(size=stacked.k.shape).astype(np.float32) for _ in range(2))
    stacked = stacked.replace(k=jnp.asarray(k), v=jnp.asarray(v))
    per = KVCache.init(cfg, 3, 24, per_layer=True)
    assert per.max_len == stacked.max_len == 24 and len(per.k) == cfg.num_layers
    per = per.replace(k=tuple(jnp.asarray(x) for x in k), v=tuple(jnp.asarray(x) for x in v))

    def same(a, b):
        for i in range(cfg.num_layers):
            np.testing.assert_array_equal(np.asarray(a.k[i]), np.asarray(b.k)[i])
            np.testing.assert_array_equal(np.asarray(a.v[i]), np.asarray(b.v)[i])

    start = jnp.asarray([2, 5, 0], jnp.int32)
    same(per.keep_strided(start, 3, 4), stacked.keep_strided(start, 3, 4))
    small_s, small_p = stacked.map_stacks(lambda x: x[:, ::-1]), per.map_stacks(lambda x: x[:, ::-1])
    key = jnp.zeros((3, 2), jnp.uint32)  # raw key data, as the engine's rows carry it
    rows = [fresh(3, 8, 0, key, c, {}) for c in (stacked, per, small_s, small_p)]
    same(put(rows[1], rows[3], 1, src=2).cache, put(rows[0], rows[2], 1, src=2).cache)
    with pytest.raises(ValueError, match="different layouts"):
        per.map_stacks(lambda a, b: a, stacked)
    with pytest.raises(ValueError, match="per-layer KV cache needs per-layer parameters"):
        nd.forward(nd.init_params(cfg, 0), cfg, jnp.ones((3, 1), jnp.int32), jnp.ones((3, 1), jnp.int32),
                   masks.causal(per.length, 1, 3), per)


def test_quantize_and_hf_tensors_read_either_layout():
    m = tiny_model(lora_rank=4)
    per = unstack_layers(m.params)
    assert _equal(unstack_layers(quantize_params(m.params)), quantize_params(per))
    a, b = list(iter_hf_tensors(m.config, m.params)), list(iter_hf_tensors(m.config, per))
    assert [n for n, _ in a] == [n for n, _ in b] and all(np.array_equal(x, y) for (_, x), (_, y) in zip(a, b))


def test_sharding_rules_drop_the_layer_axis_per_layer():
    assert stacked_name("layers_12.mlp.up_proj") == ("layers.mlp.up_proj", True)
    assert stacked_name("layers.mlp.up_proj") == ("layers.mlp.up_proj", False)
    assert stacked_name("layers_x.mlp") == ("layers_x.mlp", False) and stacked_name("norm.scale")[1] is False
    assert sharding.leaf_axes("layers.self_attn.q_proj", 4) == (None, "embed", "heads", None)
    assert sharding.leaf_axes("layers_7.self_attn.q_proj", 3) == ("embed", "heads", None)
    assert sharding.leaf_axes("layers_0.mlp.down_proj.qvalue", 2) == ("mlp", "embed")
    with pytest.raises(KeyError, match="no sharding rule"):
        sharding.leaf_axes("layers_0.mlp.nope", 2)


def test_load_per_layer_on_request(tmp_path):
    m = nd.load("embedded", stacked=False)
    assert not is_stacked(m.params) and len(layer_keys(m.params)) == m.config.num_layers
    s = nd.load("embedded")
    assert is_stacked(s.params) and _equal(stack_layers(m.params), s.params)
    ids = np.array([[1, 381, 33, 298, 285, 293]])
    np.testing.assert_array_equal(nd.forward_logits(m, ids, "bidirectional", lora=True),
                                  nd.forward_logits(s, ids, "bidirectional", lora=True))
