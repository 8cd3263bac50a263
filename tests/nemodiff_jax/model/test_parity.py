"""Whole-model parity with transformers' Ministral3 (fp32, CPU): causal, bidirectional,
and block-after-block through the static cache. Bar: max abs logit error 1e-4."""

import numpy as np
import pytest

import jax.numpy as jnp

import nemodiff_jax as nd
from nemodiff_jax.model import masks
from nemodiff_jax.model.cache import KVCache

pytest.importorskip("torch")
pytest.importorskip("transformers")

from tests.hf_reference import TorchNLD  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    ref = TorchNLD(seed=0)
    model = nd.load(ref.save(tmp_path_factory.mktemp("ckpt")))
    return ref, model


def test_config_read_from_checkpoint(pair):
    ref, model = pair
    c = model.config
    assert (c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim) == (64, 2, 4, 2, 16)
    assert c.rope_type == "yarn" and c.original_max_position_embeddings == 16 and c.llama4_scaling_beta == 0.1
    assert c.dtype == "float32"


@pytest.mark.parametrize("length", [7, 50])  # 50 > original window 16 and > 2 * 16: YaRN + query scale
def test_causal_logits(pair, length):
    ref, model = pair
    ids = np.random.default_rng(length).integers(0, ref.vocab_size, (2, length))
    got = np.asarray(nd.forward_logits(model, ids, mode="causal"))
    want = ref.logits(ids)
    assert np.abs(got - want).max() < TOL


def test_bidirectional_logits(pair):
    ref, model = pair
    ids = np.random.default_rng(1).integers(0, ref.vocab_size, (2, 40))
    got = np.asarray(nd.forward_logits(model, ids, mode="bidirectional"))
    want = ref.logits(ids, bidirectional=True)
    assert np.abs(got - want).max() < TOL
    # and it really differs from causal, so the mask is doing something
    assert np.abs(got - ref.logits(ids)).max() > 1e-3


@pytest.mark.parametrize("bidir", [False, True])
def test_blocks_through_cache_equal_whole_sequence(pair, bidir):
    """Prefill, then blocks through the cache. Causal blocks must equal the causal whole
    sequence; a bidirectional block over a causal prefix must equal the torch model given
    the matching 4D mask (prefix causal, block sees prefix + whole block)."""
    ref, model = pair
    cfg = model.config
    prompt, block, nblocks = 11, 8, 4
    total = prompt + block * nblocks
    ids = np.random.default_rng(7).integers(0, ref.vocab_size, (2, total))
    cache = KVCache.init(cfg, 2, 64)
    zero = jnp.zeros((2,), jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(prompt), (2, prompt))
    logits, cache = nd.forward(model.params, cfg, jnp.asarray(ids[:, :prompt]), pos, masks.causal(zero, prompt), cache)
    cache = cache.with_length(prompt)
    causal_ref = ref.logits(ids)
    assert np.abs(np.asarray(logits) - causal_ref[:, :prompt]).max() < TOL
    for i in range(nblocks):
        start = prompt + i * block
        window = jnp.asarray(ids[:, start : start + block])
        pos = jnp.broadcast_to(jnp.arange(start, start + block), (2, block))
        if bidir:
            pol = masks.bidirectional(cache.length, block)
            peek, _ = nd.forward(model.params, cfg, window, pos, pol, cache)
            want = _torch_prefix_bidir(ref, ids[:, : start + block], start)
            assert np.abs(np.asarray(peek) - want[:, start:]).max() < TOL
        logits, cache = nd.forward(model.params, cfg, window, pos, masks.causal(cache.length, block), cache)
        assert np.abs(np.asarray(logits) - causal_ref[:, start : start + block]).max() < TOL
        cache = cache.with_length(start + block)


def _torch_prefix_bidir(ref, ids, block_start):
    import torch

    length = ids.shape[1]
    allowed = np.tril(np.ones((length, length), bool))
    allowed[block_start:, :] = True
    mask = torch.where(torch.as_tensor(allowed), 0.0, float("-inf"))[None, None].repeat(ids.shape[0], 1, 1, 1)
    with torch.no_grad():
        out = ref.encoder(input_ids=torch.as_tensor(ids), attention_mask=mask)
        return ref.head(out.last_hidden_state).numpy()
