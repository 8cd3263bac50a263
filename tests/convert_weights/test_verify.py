"""--verify: transformers' Ministral3Model (built from the HF side) against our model on a
short causal and bidirectional input (and with the LoRA on); a wrong port fails the bar."""

import shutil

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from convert_weights.__main__ import main
from convert_weights.convert import convert_hf
from nemodiff_jax.io.keymap import transpose
from convert_weights.verify import VerifyError, compare

from .helpers import make_lora, save_checkpoint


def _diffs(err: str) -> dict:
    line = next(ln for ln in err.splitlines() if ln.startswith("verify: "))
    parts = line.split("difference ", 1)[1].split(", ")
    return {p.rsplit(" ", 1)[0]: float(p.rsplit(" ", 1)[1]) for p in parts}


def test_verify_fp32_with_lora(ref, tmp_path, capsys):
    src = save_checkpoint(ref, tmp_path / "src", "sharded", "float32")
    adapter = make_lora(tmp_path / "adapter", ref)
    assert main([str(src), str(tmp_path / "out"), "--lora", str(adapter), "--verify"]) == 0
    d = _diffs(capsys.readouterr().err)
    assert set(d) == {"causal", "bidirectional", "bidirectional+lora"} and max(d.values()) < 1e-4


def test_verify_bf16_and_export(ref, tmp_path, capsys):
    src = save_checkpoint(ref, tmp_path / "src", "single", "bfloat16")
    assert main([str(src), str(tmp_path / "out"), "--verify"]) == 0
    assert set(_diffs(capsys.readouterr().err)) == {"causal", "bidirectional"}
    f32 = tmp_path / "f32"
    assert main([str(src), str(f32), "--dtype", "float32", "--quiet"]) == 0
    # export narrows back to bf16; verify runs both sides in the exported dtype
    assert main(["--to-hf", str(f32), str(tmp_path / "hf"), "--dtype", "bfloat16", "--max-shard-size", "50KB", "--verify-layers", "1"]) == 0
    assert set(_diffs(capsys.readouterr().err)) == {"causal", "bidirectional"}


def test_verify_catches_a_wrong_port(ref, tmp_path):
    """Same tensors, layers 0 and 1 swapped on the HF side: verify must fail."""
    src = save_checkpoint(ref, tmp_path / "src", "single", "float32")
    out = convert_hf(src, tmp_path / "out", progress=False)
    swapped = shutil.copytree(src, tmp_path / "swapped")
    sd = load_file(str(src / "model.safetensors"))
    sd = {k.replace("layers.0.", "layers.X.").replace("layers.1.", "layers.0.").replace("layers.X.", "layers.1."): v for k, v in sd.items()}
    save_file(sd, str(swapped / "model.safetensors"))
    with pytest.raises(VerifyError, match="logits differ from transformers"):
        compare(swapped, out)


def test_tiled_transpose():
    a = np.random.default_rng(0).standard_normal((1100, 1000)).astype(np.float32)  # > 1M elements, ragged tiles
    assert np.array_equal(transpose(a), a.T) and transpose(a).flags.c_contiguous
