"""Checkpoints for the port tests, built in the test from a tiny random transformers model:
single file, sharded with an index, torch pickle; bf16 or fp32; PEFT draft adapters; and
the torch reference logits with the adapter applied by a forward hook (independent of ours)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

LORA_KEY = "base_model.model.encoder.layers.{i}.self_attn.o_proj.lora_{ab}.weight"


def torch_state(ref, dtype: str) -> dict:
    import torch

    tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    return {k: v.detach().to(tdt).contiguous() for k, v in ref.state_dict().items()}


def save_checkpoint(ref, directory: Path, fmt: str = "single", dtype: str = "float32") -> Path:
    """``fmt``: single (model.safetensors), sharded (3 shards + index), bin (pytorch_model.bin)."""
    import torch
    from safetensors.torch import save_file

    directory = ref.save(Path(directory), dtype=dtype)
    if fmt == "single":
        return directory
    (directory / "model.safetensors").unlink()
    sd = torch_state(ref, dtype)
    if fmt == "bin":
        torch.save(sd, directory / "pytorch_model.bin")
        return directory
    assert fmt == "sharded", fmt
    names = list(sd)
    parts = [names[i::3] for i in range(3)]  # interleaved, so every shard holds some of every layer
    weight_map = {}
    for i, part in enumerate(parts):
        fname = f"model-{i + 1:05d}-of-00003.safetensors"
        save_file({k: sd[k] for k in part}, str(directory / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in part})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory


def make_lora(
    directory: Path,
    ref,
    rank: int = 4,
    alpha: float = 8.0,
    dtype: str = "float32",
    seed: int = 1,
    layers: int | None = None,
    config_rank: int | None = None,
    extra_config: dict | None = None,
) -> Path:
    """A PEFT adapter on o_proj with random A and B (B non-zero so the LoRA changes logits)."""
    import torch
    from safetensors.torch import save_file

    cfg = ref.hf_config
    q_width = cfg.num_attention_heads * cfg.head_dim
    g = torch.Generator().manual_seed(seed)
    tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    sd = {}
    for i in range(cfg.num_hidden_layers if layers is None else layers):
        sd[LORA_KEY.format(i=i, ab="A")] = (0.1 * torch.randn(rank, q_width, generator=g)).to(tdt)
        sd[LORA_KEY.format(i=i, ab="B")] = (0.1 * torch.randn(cfg.hidden_size, rank, generator=g)).to(tdt)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(directory / "adapter_model.safetensors"))
    acfg = {"peft_type": "LORA", "r": config_rank or rank, "lora_alpha": alpha, "target_modules": ["o_proj"], "inference_mode": True}
    acfg.update(extra_config or {})
    (directory / "adapter_config.json").write_text(json.dumps(acfg))
    return directory


def torch_logits_with_lora(ref, lora_dir: Path, ids: np.ndarray) -> np.ndarray:
    """Bidirectional torch logits with o_proj(x) + alpha/r * B(A x) on every layer."""
    from safetensors.torch import load_file

    sd = load_file(str(Path(lora_dir) / "adapter_model.safetensors"))
    acfg = json.loads((Path(lora_dir) / "adapter_config.json").read_text())
    scale = acfg["lora_alpha"] / acfg["r"]
    handles = []
    for i, layer in enumerate(ref.encoder.layers):
        a = sd[LORA_KEY.format(i=i, ab="A")].float()
        b = sd[LORA_KEY.format(i=i, ab="B")].float()
        handles.append(layer.self_attn.o_proj.register_forward_hook(lambda m, inp, out, a=a, b=b: out + scale * (inp[0] @ a.T @ b.T)))
    try:
        return ref.logits(ids, bidirectional=True)
    finally:
        for h in handles:
            h.remove()


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def bits(a: np.ndarray) -> bytes:
    """Raw bytes with dtype and shape, for bitwise comparison."""
    return str(a.dtype).encode() + str(a.shape).encode() + np.ascontiguousarray(a).tobytes()
