"""HF -> JAX -> HF on every source format: values bit-exact both ways, layout right
(checked against an explicit index formula and against transformers' logits)."""

import json

import numpy as np
import pytest
from safetensors.torch import load_file

import nemodiff_jax as nd
from convert_weights.convert import convert_hf
from convert_weights.export import export_hf, export_model
from nemodiff_jax.io.jax_format import read_converted
from nemodiff_jax.io.keymap import get_path, hf_param_specs

from .helpers import bits, save_checkpoint, torch_state

FORMATS = [("single", "bfloat16"), ("single", "float32"), ("sharded", "bfloat16"), ("bin", "bfloat16"), ("bin", "float32")]


def _numpy(t):
    import ml_dtypes
    import torch

    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _exported(directory):
    """Every tensor of an HF directory, read with safetensors itself (not our reader)."""
    index = directory / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    out = {}
    for f in files:
        out.update({k: _numpy(v) for k, v in load_file(str(directory / f)).items()})
    return out


@pytest.mark.parametrize("fmt,dtype", FORMATS)
def test_convert_is_bit_exact_and_exports_back(ref, tmp_path, fmt, dtype):
    src = save_checkpoint(ref, tmp_path / "src", fmt, dtype)
    out = convert_hf(src, tmp_path / "jax", progress=False)
    want = {k: _numpy(v) for k, v in torch_state(ref, dtype).items()}

    cfg, params = read_converted(out)
    assert cfg.dtype == dtype and cfg.lora_rank == 0
    for spec in hf_param_specs(cfg):
        leaf = np.asarray(get_path(params, spec.path))
        got = spec.to_hf(leaf if spec.layer is None else leaf[spec.layer])
        assert bits(got) == bits(want[spec.hf_name]), spec.hf_name

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dtype"] == dtype and manifest["param_count"] == sum(v.size for v in want.values())
    assert {f["path"] for f in manifest["source_files"]} >= {"config.json"}
    assert all(len(f["sha256"]) == 64 for f in manifest["source_files"])

    hf = export_hf(out, tmp_path / "hf", max_shard_size="40KB", progress=False)
    got = _exported(hf)
    assert set(got) == set(want)
    assert all(bits(got[k]) == bits(want[k]) for k in want)
    assert (hf / "model.safetensors.index.json").is_file()  # 40KB forces shards
    assert all(f.stat().st_size <= 40_000 or len(load_file(str(f))) == 1 for f in hf.glob("*.safetensors"))


def test_layout_matches_index_formula(ref, tmp_path):
    """q_proj [H, N, D][h, n, d] = W_q[n*D + d, h]; o_proj [N, D, H][n, d, h] = W_o[h, n*D + d]."""
    out = convert_hf(save_checkpoint(ref, tmp_path / "src"), tmp_path / "jax", progress=False)
    _, params = read_converted(out)
    sd = {k: v.numpy() for k, v in torch_state(ref, "float32").items()}
    wq, wo = sd["encoder.layers.1.self_attn.q_proj.weight"], sd["encoder.layers.1.self_attn.o_proj.weight"]
    q, o = np.asarray(params["layers"]["self_attn"]["q_proj"][1]), np.asarray(params["layers"]["self_attn"]["o_proj"][1])
    h, n, d = q.shape
    for hh, nn, dd in [(0, 0, 0), (5, 1, 3), (h - 1, n - 1, d - 1), (17, 2, 9)]:
        assert q[hh, nn, dd] == wq[nn * d + dd, hh]
        assert o[nn, dd, hh] == wo[hh, nn * d + dd]
    assert np.array_equal(np.asarray(params["diffusion_head"]), sd["diffusion_head.weight"].T)


def test_converted_logits_match_transformers(ref, tmp_path):
    out = convert_hf(save_checkpoint(ref, tmp_path / "src", "sharded"), tmp_path / "jax", progress=False)
    model = nd.load(out)
    ids = np.random.default_rng(3).integers(0, ref.vocab_size, (2, 24))
    assert np.abs(np.asarray(nd.forward_logits(model, ids)) - ref.logits(ids)).max() < 1e-4
    got = np.asarray(nd.forward_logits(model, ids, mode="bidirectional"))
    assert np.abs(got - ref.logits(ids, bidirectional=True)).max() < 1e-4


def test_dtype_option_and_load_dtype(ref, tmp_path):
    """--dtype float32 from bf16 is exact (a widening); loading a bf16 conversion as float32 too."""
    src = save_checkpoint(ref, tmp_path / "src", "single", "bfloat16")
    wide = convert_hf(src, tmp_path / "f32", dtype="float32", progress=False)
    narrow = convert_hf(src, tmp_path / "bf16", progress=False)
    cfg_w, p_w = read_converted(wide)
    cfg_n, p_n = read_converted(narrow, dtype="float32")
    assert cfg_w.dtype == cfg_n.dtype == "float32"
    for a, b in zip(jax_leaves(p_w), jax_leaves(p_n)):
        assert a.dtype == b.dtype == np.float32 and np.array_equal(a, b)
    assert json.loads((wide / "config.json").read_text())["torch_dtype"] == "float32"


def jax_leaves(params):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(params)]


def test_export_loads_in_transformers(ref, tmp_path):
    """The exported directory builds transformers' Ministral3Model (strict state dict) + head
    and gives the original logits."""
    import torch
    from transformers import Ministral3Config, Ministral3Model

    out = convert_hf(save_checkpoint(ref, tmp_path / "src"), tmp_path / "jax", progress=False)
    hf = export_hf(out, tmp_path / "hf", max_shard_size="100KB", progress=False)
    cfg = json.loads((hf / "config.json").read_text())
    assert cfg["model_type"] == "nemotron_labs_diffusion" and "lora_rank" not in cfg
    known = set(Ministral3Config().to_dict())
    hf_cfg = Ministral3Config(**{k: v for k, v in cfg.items() if k in known and k not in ("model_type", "architectures")})
    hf_cfg._attn_implementation = "eager"
    encoder = Ministral3Model(hf_cfg).eval()
    sd = {k: torch.from_numpy(np.array(v)) for k, v in _exported(hf).items()}
    encoder.load_state_dict({k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}, strict=True)
    ids = np.random.default_rng(5).integers(0, ref.vocab_size, (2, 20))
    with torch.no_grad():
        got = (encoder(input_ids=torch.as_tensor(ids)).last_hidden_state @ sd["diffusion_head.weight"].T).numpy()
    assert np.abs(got - ref.logits(ids)).max() < 1e-5


def test_export_in_memory_model(ref, tmp_path):
    """A Model in memory (e.g. after fine-tuning) exports to the same tensors."""
    src = save_checkpoint(ref, tmp_path / "src", "single", "bfloat16")
    hf = export_model(nd.load(src), tmp_path / "hf")
    want = {k: _numpy(v) for k, v in torch_state(ref, "bfloat16").items()}
    got = _exported(hf)
    assert set(got) == set(want) and all(bits(got[k]) == bits(want[k]) for k in want)


def test_side_files_are_copied(ref, tmp_path):
    src = save_checkpoint(ref, tmp_path / "src")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "generation_config.json"):
        (src / name).write_text("{}" if name.endswith(".json") else "{{ messages }}")
    out = convert_hf(src, tmp_path / "jax", progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["copied_files"]) == {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "generation_config.json"}
    assert (out / "chat_template.jinja").read_text() == "{{ messages }}"
    hf = export_hf(out, tmp_path / "hf", progress=False)
    assert (hf / "tokenizer.json").is_file() and (hf / "generation_config.json").is_file()
