"""The two parameter layouts: the conversions are exact and inverse, every consumer (forward,
decode, quantize, sharding rules, the HF key map) reads either, and the per-layer layout is
the one whose compiled decode slices no weights out of a stack."""

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


def _weight_slices(model) -> list[str]:
    """Compiled-HLO ops of a 1-token forward over a cache (a decode step) that produce an array of
    an MLP weight's shape by slicing (the copy a scan makes of each stacked weight)."""
    cfg = model.config
    cache = KVCache.init(cfg, 1, 16, jnp.float32).with_length(jnp.full((1,), 5, jnp.int32))
    tok, pos = jnp.full((1, 1), 3, jnp.int32), jnp.full((1, 1), 5, jnp.int32)
    hlo = jax.jit(lambda p, c: nd.forward(p, cfg, tok, pos, masks.causal(c.length, 1, 1), c)).lower(
        model.params, cache).compile().as_text()
    shapes = {f"f32[{cfg.hidden_size},{cfg.intermediate_size}]", f"f32[{cfg.intermediate_size},{cfg.hidden_size}]"}
    found = []
    for line in hlo.splitlines():
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\w+\[[\d,]*\])", line)
        if m and "slice" in m.group(1) and m.group(2) in shapes:
            found.append(m.group(1))
    return found


def test_per_layer_decode_copies_no_weights():
    cfg = tiny_model().config.replace(hidden_size=48, intermediate_size=80, num_heads=2, head_dim=24)
    stacked = nd.Model(cfg, nd.init_params(cfg, 0))
    per = stacked.replace(params=unstack_layers(stacked.params))
    assert _weight_slices(stacked)  # the scan's copies: what this test looks for is really there
    assert _weight_slices(per) == []


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
