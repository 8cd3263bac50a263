"""Build tiny random transformers Ministral3 models (the independent reference) and save
them as HF NLD checkpoint directories. Imported by tests; needs torch + transformers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TINY = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=1024,
    rms_norm_eps=1e-5,
)
ROPE = dict(
    rope_type="yarn",
    rope_theta=10000.0,
    factor=4.0,
    original_max_position_embeddings=16,
    max_position_embeddings=1024,
    beta_fast=32.0,
    beta_slow=1.0,
    mscale=1.0,
    mscale_all_dim=1.0,
    llama_4_scaling_beta=0.1,
)


class TorchNLD:
    """transformers' Ministral3Model plus an untied linear `diffusion_head`."""

    def __init__(self, seed: int = 0, **overrides):
        import torch
        from transformers import Ministral3Config, Ministral3Model

        torch.manual_seed(seed)
        kw = {**TINY, **overrides}
        self.hf_config = Ministral3Config(**kw, rope_parameters=dict(ROPE), bos_token_id=1, eos_token_id=2, pad_token_id=0)
        self.hf_config._attn_implementation = "eager"
        self.encoder = Ministral3Model(self.hf_config).eval()
        # Random norms so a transposed weight cannot hide behind all-ones.
        with torch.no_grad():
            for name, p in self.encoder.named_parameters():
                if "norm" in name:
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
        self.head = torch.nn.Linear(kw["hidden_size"], kw["vocab_size"], bias=False)
        self.vocab_size = kw["vocab_size"]

    def state_dict(self) -> dict:
        sd = {f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}
        sd["diffusion_head.weight"] = self.head.weight
        return sd

    def logits(self, ids: np.ndarray, bidirectional: bool = False) -> np.ndarray:
        import torch

        x = torch.as_tensor(np.asarray(ids), dtype=torch.long)
        with torch.no_grad():
            if bidirectional:
                b, length = x.shape
                mask = torch.zeros((b, 1, length, length), dtype=torch.float32)
                out = self.encoder(input_ids=x, attention_mask=mask)
            else:
                out = self.encoder(input_ids=x)
            return self.head(out.last_hidden_state).float().numpy()

    def save(self, directory: Path, dtype: str = "float32", mask_token_id: int = 3) -> Path:
        import torch
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        sd = {k: v.detach().to(tdt).contiguous() for k, v in self.state_dict().items()}
        save_file(sd, str(directory / "model.safetensors"))
        cfg = self.hf_config.to_dict()
        cfg.update(model_type="nemotron_labs_diffusion", mask_token_id=mask_token_id, block_size=8, torch_dtype=dtype)
        (directory / "config.json").write_text(json.dumps(cfg, indent=1, default=str))
        return directory
