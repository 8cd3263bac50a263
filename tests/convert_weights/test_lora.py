"""The draft LoRA: converted with the base, alone into an existing OUT, picked up from an HF
directory's linear_spec_lora/, exported back as a PEFT adapter, and numerically right
(bidirectional logits with the adapter on equal torch with a forward hook on o_proj)."""

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file

import nemodiff_jax as nd
from convert_weights.__main__ import main
from convert_weights.convert import convert_hf
from convert_weights.export import export_hf

from .helpers import bits, make_lora, save_checkpoint, torch_logits_with_lora

RANK, ALPHA = 4, 8.0


@pytest.fixture(scope="module")
def base(ref, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    src = save_checkpoint(ref, root / "src", "single", "float32")
    adapter = make_lora(root / "adapter", ref, RANK, ALPHA)
    ids = np.random.default_rng(11).integers(0, ref.vocab_size, (2, 20))
    return root, src, adapter, ids, torch_logits_with_lora(ref, adapter, ids)


def _check_model(model, ref, ids, want_lora):
    assert model.has_lora and model.config.lora_rank == RANK and model.config.lora_scale == ALPHA / RANK
    sa = model.params["layers"]["self_attn"]
    assert sa["lora_a"].shape == (2, 64, RANK) and sa["lora_b"].shape == (2, RANK, 64)
    got = np.asarray(nd.forward_logits(model, ids, mode="bidirectional", lora=True))
    assert np.abs(got - want_lora).max() < 1e-4
    # the switch off gives the base model back
    base = np.asarray(nd.forward_logits(model, ids, mode="bidirectional", lora=False))
    assert np.abs(base - ref.logits(ids, bidirectional=True)).max() < 1e-4
    assert np.abs(want_lora - ref.logits(ids, bidirectional=True)).max() > 1e-2


def test_lora_with_base_and_back(ref, base, tmp_path):
    root, src, adapter, ids, want = base
    out = convert_hf(src, tmp_path / "jax", lora=adapter, progress=False)
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["lora_rank"], cfg["lora_alpha"]) == (RANK, ALPHA)
    assert json.loads((out / "manifest.json").read_text())["lora"]["rank"] == RANK
    _check_model(nd.load(out), ref, ids, want)

    hf = export_hf(out, tmp_path / "hf", progress=False)
    got, orig = load_file(str(hf / "linear_spec_lora/adapter_model.safetensors")), load_file(str(adapter / "adapter_model.safetensors"))
    assert set(got) == set(orig) and all(bits(got[k]) == bits(orig[k]) for k in orig)
    acfg = json.loads((hf / "linear_spec_lora/adapter_config.json").read_text())
    assert (acfg["r"], acfg["lora_alpha"], acfg["target_modules"]) == (RANK, ALPHA, ["o_proj"])
    assert "lora_rank" not in json.loads((hf / "config.json").read_text())
    # the exported Instruct layout loads directly and converts back to the same thing
    _check_model(nd.load(hf), ref, ids, want)


def test_lora_alone_into_existing_out(ref, base, tmp_path, capsys):
    root, src, adapter, ids, want = base
    assert main([str(src), str(tmp_path / "jax"), "--quiet"]) == 0
    assert not nd.load(tmp_path / "jax").has_lora
    assert main(["--lora", str(adapter), str(tmp_path / "jax"), "--quiet"]) == 0
    _check_model(nd.load(tmp_path / "jax"), ref, ids, want)
    # a second LoRA needs --force, and leaves the first one in place
    assert main(["--lora", str(adapter), str(tmp_path / "jax"), "--quiet"]) == 2
    assert "already has a LoRA" in capsys.readouterr().err
    assert main(["--lora", str(adapter), str(tmp_path / "jax"), "--quiet", "--force"]) == 0
    assert [p.name for p in (tmp_path / "jax").iterdir() if p.name.startswith(".")] == []


def test_bundled_linear_spec_lora(ref, base, tmp_path):
    """The released Instruct layout: an HF dir with linear_spec_lora/ (bf16 base, fp32 adapter)."""
    root, src, adapter, ids, want = base
    inst = save_checkpoint(ref, tmp_path / "inst", "sharded", "float32")
    shutil.copytree(adapter, inst / "linear_spec_lora")
    _check_model(nd.load(inst), ref, ids, want)
    out = convert_hf(inst, tmp_path / "jax", progress=False)
    assert (out / "lora").is_dir()
    _check_model(nd.load(out), ref, ids, want)
    plain = convert_hf(inst, tmp_path / "plain", lora=False, progress=False)
    assert not (plain / "lora").exists() and not nd.load(plain).has_lora


def test_bf16_base_keeps_fp32_adapter_on_disk(ref, base, tmp_path):
    root, src, adapter, ids, want = base
    src16 = save_checkpoint(ref, tmp_path / "src16", "single", "bfloat16")
    out = convert_hf(src16, tmp_path / "jax", lora=adapter, progress=False)
    assert json.loads((out / "manifest.json").read_text())["lora"]["dtype"] == "float32"
    model = nd.load(out)
    assert model.params["layers"]["self_attn"]["lora_a"].dtype == np.dtype("bfloat16")  # cast at load, like the base
    hf = export_hf(out, tmp_path / "hf", progress=False)
    got, orig = load_file(str(hf / "linear_spec_lora/adapter_model.safetensors")), load_file(str(adapter / "adapter_model.safetensors"))
    assert all(bits(got[k]) == bits(orig[k]) for k in orig)
