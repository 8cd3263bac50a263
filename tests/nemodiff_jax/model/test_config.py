"""Presets, the HF config reader, and parameter counts without allocating memory."""

import json

import jax
import pytest

import nemodiff_jax as nd
from nemodiff_jax.model.config import NLDConfig


@pytest.mark.parametrize("name,billions", [("3b", 3.83), ("8b", 8.49), ("14b", 13.51)])
def test_preset_parameter_counts(name, billions):
    shapes = nd.abstract_params(NLDConfig.preset(name))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(shapes))
    n = nd.count_params(shapes) / 1e9
    assert abs(n - billions) / billions < 0.005


def test_tiny_preset_is_a_few_million():
    n = nd.count_params(nd.abstract_params(NLDConfig.preset("tiny")))
    assert 1e6 < n < 5e6


def test_configs_are_frozen_and_hashable():
    c = NLDConfig.preset("8b")
    assert hash(c) == hash(NLDConfig.preset("8b"))
    with pytest.raises(Exception):
        c.hidden_size = 1  # type: ignore[misc]


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset"):
        NLDConfig.preset("70b")


HF_8B = {
    "architectures": ["NemotronLabsDiffusionModel"],
    "model_type": "nemotron_labs_diffusion",
    "vocab_size": 131072,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 34,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 262144,
    "rope_parameters": {
        "rope_type": "yarn",
        "rope_theta": 1000000.0,
        "factor": 16.0,
        "original_max_position_embeddings": 16384,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
        "llama_4_scaling_beta": 0.1,
    },
    "mask_token_id": 100,
    "block_size": 32,
    "bos_token_id": 1,
    "eos_token_id": 11,
    "torch_dtype": "bfloat16",
}


def test_from_hf_reads_the_8b_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(HF_8B))
    c = NLDConfig.from_hf(tmp_path)
    want = NLDConfig.preset("8b")
    for field in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "rope_theta",
                  "rope_factor", "original_max_position_embeddings", "llama4_scaling_beta",
                  "mask_token_id", "eos_token_id", "block_size"):
        assert getattr(c, field) == getattr(want, field), field


def test_from_hf_accepts_rope_scaling_and_ministral3(tmp_path):
    d = dict(HF_8B, model_type="ministral3", rope_theta=1e9)
    d["rope_scaling"] = dict(d.pop("rope_parameters"))
    del d["rope_scaling"]["rope_theta"]
    (tmp_path / "config.json").write_text(json.dumps(d))
    c = NLDConfig.from_hf(tmp_path / "config.json")
    assert c.rope_theta == 1e9 and c.rope_type == "yarn" and c.rope_factor == 16.0


def test_from_hf_lora_fields(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(dict(HF_8B, lora_rank=128, lora_alpha=512)))
    c = NLDConfig.from_hf(tmp_path)
    assert c.lora_rank == 128 and c.lora_scale == 4.0


def test_round_trip_through_hf_dict(tmp_path):
    c = NLDConfig.preset("14b")
    (tmp_path / "config.json").write_text(json.dumps(c.to_hf_dict()))
    assert NLDConfig.from_hf(tmp_path) == c


@pytest.mark.parametrize(
    "change,needle",
    [({"model_type": "llama"}, "model_type"), ({"hidden_size": None}, "hidden_size"), ({"num_hidden_layers": None}, "num_hidden_layers")],
)
def test_from_hf_errors_name_the_problem(tmp_path, change, needle):
    d = dict(HF_8B)
    d.update(change)
    d = {k: v for k, v in d.items() if v is not None}
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match=needle):
        NLDConfig.from_hf(tmp_path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        NLDConfig.from_hf(tmp_path)
