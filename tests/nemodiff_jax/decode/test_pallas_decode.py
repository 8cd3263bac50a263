"""A full decode in every mode gives the same tokens with attention_impl="pallas" (interpret
mode on CPU) as with "xla"."""

import pytest

import nemodiff_jax as nd

from .tiny import tiny_model

PROMPTS = [[5, 9, 11, 2 + 20], [7, 1, 30]]


@pytest.mark.parametrize("mode", ["ar", "diffusion", "linear_spec", "quadratic_spec"])
def test_every_mode_same_tokens(mode):
    xla = tiny_model(seed=4)
    pallas = xla.replace(config=xla.config.replace(attention_impl="pallas"))
    kw = dict(mode=mode, max_new_tokens=8, block_length=4)
    if mode == "diffusion":
        kw["threshold"] = 0.5
    a = nd.generate(xla, PROMPTS, **kw)
    b = nd.generate(pallas, PROMPTS, **kw)
    assert a.tokens == b.tokens
    assert list(a.nfe) == list(b.nfe)
