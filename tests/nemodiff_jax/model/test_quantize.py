"""int8 weight-only quantization (model/quantize.py): per-output-channel scales, a third of the
fp32 bytes, logits near the unquantized model's, speculative decoding equal to AR decoding of
the same quantized model, and the quantized leaves placed by the sharding rules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import nemodiff_jax as nd
from nemodiff_jax.model.quantize import dequant, param_bytes, quantize_params
from nemodiff_jax.model.sharding import leaf_axes, spec_for


@pytest.fixture(scope="module")
def models():
    fp = nd.load("embedded")
    return fp, nd.load("embedded", quantize="int8")


def test_per_output_channel_scales_round_trip():
    w = jax.random.normal(jax.random.key(0), (3, 16, 4, 8)) * jnp.arange(1, 33).reshape(4, 8)
    q = quantize_params({"layers": {"self_attn": {"q_proj": w}}})["layers"]["self_attn"]["q_proj"]
    assert q["qvalue"].dtype == jnp.int8 and q["scale_q"].shape == (3, 1, 4, 8)  # per layer, per (head, dim)
    err = jnp.abs(dequant(q, jnp.float32) - w)
    assert bool(jnp.all(err <= q["scale_q"] / 2 + 1e-6))  # half a step per channel


def test_int8_memory_and_logit_error(models):
    fp, q = models
    assert q.params["layers"]["mlp"]["up_proj"]["qvalue"].dtype == jnp.int8
    assert q.params["embed_tokens"].dtype == fp.params["embed_tokens"].dtype  # the gather stays
    ratio = param_bytes(q.params) / param_bytes(fp.params)
    assert ratio < 0.4, ratio  # fp32 -> int8 on the linears (the embedding is kept): 0.376 measured
    ids = np.array([[1, 381, 33, 298, 285, 293, 298, 287, 282, 299, 282, 287, 286, 300, 301, 296, 304]])
    ref, got = np.asarray(nd.forward_logits(fp, ids)), np.asarray(nd.forward_logits(q, ids))
    assert np.abs(got - ref).max() < 0.25 * ref.std()
    assert (got.argmax(-1) == ref.argmax(-1)).mean() > 0.9


def test_speculative_equals_ar_on_the_quantized_model(models):
    _, q = models
    prompts = [[1, 382, 272, 33, 289, 265, 292, 297, 266, 296, 284, 304],
               [1, 377, 33, 271, 270, 272, 275, 274, 271, 276, 270, 273, 272, 278, 272, 274, 274, 270, 281, 271, 271, 304]]
    ar = nd.generate(q, prompts, mode="ar", max_new_tokens=32).tokens
    assert min(len(t) for t in ar) > 10
    assert nd.generate(q, prompts, mode="linear_spec", max_new_tokens=32, block_length=8).tokens == ar


def test_quantized_leaves_follow_the_sharding_rules():
    sizes = {"data": 2, "model": 4}
    assert spec_for((4, 192, 8, 24), leaf_axes("layers.self_attn.q_proj.qvalue", 4), sizes) == P(None, None, "model")
    assert spec_for((4, 1, 8, 24), leaf_axes("layers.self_attn.q_proj.scale_q", 4), sizes) == P(None, None, "model")
    assert spec_for((4, 1, 576), leaf_axes("layers.mlp.up_proj.scale_q", 3), sizes) == P(None, None, "model")
    assert spec_for((4, 1, 1, 192), leaf_axes("layers.self_attn.o_proj.scale_q", 4), sizes) == P()
    assert spec_for((1, 2048), leaf_axes("diffusion_head.scale_q", 2), sizes) == P(None, "model")
