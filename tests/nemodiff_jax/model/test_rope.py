"""YaRN inverse frequencies and the Llama-4 query scale against transformers / float64 numpy."""

import math

import numpy as np
import pytest

from nemodiff_jax.model import rope
from nemodiff_jax.model.config import NLDConfig

import jax.numpy as jnp


@pytest.mark.parametrize("preset", ["tiny", "8b", "14b"])
def test_yarn_inv_freq_matches_transformers(preset):
    torch = pytest.importorskip("torch")
    from transformers import Ministral3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    c = NLDConfig.preset(preset)
    hf = Ministral3Config(
        hidden_size=c.hidden_size, num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
        head_dim=c.head_dim, max_position_embeddings=c.max_position_embeddings,
        rope_parameters=dict(rope_type="yarn", rope_theta=c.rope_theta, factor=c.rope_factor,
                             original_max_position_embeddings=c.original_max_position_embeddings,
                             max_position_embeddings=c.max_position_embeddings, beta_fast=32.0, beta_slow=1.0,
                             mscale=1.0, mscale_all_dim=1.0, llama_4_scaling_beta=0.1),
    )
    want, want_factor = ROPE_INIT_FUNCTIONS["yarn"](hf, torch.device("cpu"))
    got, factor = rope.inv_freq_and_attention_factor(c)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-6)
    assert factor == pytest.approx(want_factor) == pytest.approx(1.0)


def test_llama4_scale_float64():
    c = NLDConfig.preset("8b")
    pos = np.array([[0, 16383, 16384, 40000, 200000]])
    got = np.asarray(rope.llama4_query_scale(c, jnp.asarray(pos)))
    want = 1 + 0.1 * np.log1p(np.floor(pos / 16384.0))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[0, 0] == got[0, 1] == 1.0


def test_rotation_preserves_norm_and_is_relative():
    c = NLDConfig.preset("tiny")
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(1, 2, 1, c.head_dim)).astype(np.float32))
    y = jnp.asarray(rng.normal(size=(1, 2, 1, c.head_dim)).astype(np.float32))

    def dot_at(p, q):
        cos, sin = rope.cos_sin(c, jnp.asarray([[p, q]]))
        rx, ry = rope.apply_rope(x, cos, sin), rope.apply_rope(y, cos, sin)
        return float(jnp.sum(rx[0, 0, 0] * ry[0, 1, 0]))

    assert math.isclose(dot_at(3, 7), dot_at(13, 17), rel_tol=1e-4)  # depends on the offset only
