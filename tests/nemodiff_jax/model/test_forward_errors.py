"""Bad input raises a ValueError that names the problem."""

import numpy as np
import pytest

import nemodiff_jax as nd
from nemodiff_jax.model.config import NLDConfig


@pytest.fixture(scope="module")
def model():
    cfg = NLDConfig.preset("tiny").replace(num_layers=1, max_position_embeddings=64)
    return nd.Model(cfg, nd.init_params(cfg))


@pytest.mark.parametrize(
    "ids,needle",
    [
        (np.zeros((2, 4), np.float32), "integer"),
        (np.zeros((4,), np.int32), "rank 2"),
        (np.full((1, 4), 5000, np.int32), "vocabulary"),
        (np.full((1, 4), -1, np.int32), "vocabulary"),
        (np.zeros((1, 65), np.int32), "maximum position"),
        (np.zeros((1, 0), np.int32), "at least one"),
    ],
)
def test_bad_ids(model, ids, needle):
    with pytest.raises(ValueError, match=needle):
        nd.forward_logits(model, ids)


def test_unknown_mode(model):
    with pytest.raises(ValueError, match="unknown mode"):
        nd.forward_logits(model, np.zeros((1, 3), np.int32), mode="sideways")


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        nd.load(tmp_path / "nope")
    with pytest.raises(ValueError, match="config.json"):
        nd.load(tmp_path)


def test_bad_attention_impl():
    with pytest.raises(ValueError, match="attention_impl"):
        NLDConfig.preset("tiny").replace(attention_impl="cuda")
