# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # Porting a checkpoint and checking parity
#
# NLD checkpoints are a transformers `Ministral3Model` plus an untied `diffusion_head`
# (docs/ALGORITHMS.md, "Checkpoints and special tokens"). Here we build a tiny random one with transformers, save it as an HF NLD
# directory, load it with `nemodiff_jax.load` (directly, and after converting it with
# `convert_weights`), and compare logits with PyTorch in both attention modes: causal (AR)
# and bidirectional (diffusion). Real checkpoints go through the same two calls.

# %%
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import Ministral3Config, Ministral3Model

import nemodiff_jax as nd

torch.manual_seed(0)
work = Path(tempfile.mkdtemp())

# %% [markdown]
# ## A tiny random Ministral3 with a diffusion head

# %%
rope = dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=16,
            max_position_embeddings=1024, beta_fast=32.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0,
            llama_4_scaling_beta=0.1)
hf_cfg = Ministral3Config(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
                          rope_parameters=rope, bos_token_id=1, eos_token_id=2, pad_token_id=0)
hf_cfg._attn_implementation = "eager"
encoder = Ministral3Model(hf_cfg).eval()
with torch.no_grad():  # random norms, so a transposed weight cannot hide behind all-ones
    for name, p in encoder.named_parameters():
        if "norm" in name:
            p.copy_(1.0 + 0.1 * torch.randn_like(p))
head = torch.nn.Linear(64, 96, bias=False)

src = work / "hf"
src.mkdir()
state = {f"encoder.{k}": v.contiguous() for k, v in encoder.state_dict().items()}
state["diffusion_head.weight"] = head.weight.detach().contiguous()
save_file(state, str(src / "model.safetensors"))
config = hf_cfg.to_dict()
config.update(model_type="nemotron_labs_diffusion", mask_token_id=3, block_size=8, torch_dtype="float32")
(src / "config.json").write_text(json.dumps(config, indent=1, default=str))
print(sorted(p.name for p in src.iterdir()))


# %%
def torch_logits(ids, bidirectional):
    x = torch.as_tensor(ids, dtype=torch.long)
    with torch.no_grad():
        if bidirectional:
            mask = torch.zeros((x.shape[0], 1, x.shape[1], x.shape[1]))
            h = encoder(input_ids=x, attention_mask=mask).last_hidden_state
        else:
            h = encoder(input_ids=x).last_hidden_state
        return head(h).numpy()


# %% [markdown]
# ## Load it two ways and compare
# `nd.load(dir)` reads HF safetensors directly; `convert_weights.convert.convert_hf` writes the
# converted (orbax) layout that loads without torch.

# %%
from convert_weights.convert import convert_hf

converted = convert_hf(src, work / "jax", progress=False)
ids = np.random.default_rng(0).integers(4, 96, size=(2, 24))
for label, path in (("HF directory", src), ("converted", converted)):
    model = nd.load(path)
    for mode in ("causal", "bidirectional"):
        ours = np.asarray(nd.forward_logits(model, ids, mode=mode))
        ref = torch_logits(ids, bidirectional=(mode == "bidirectional"))
        err = float(np.abs(ours - ref).max())
        same_argmax = float((ours.argmax(-1) == ref.argmax(-1)).mean())
        print(f"{label:>12s} {mode:>13s}: max |diff| = {err:.2e}, argmax agreement = {same_argmax:.3f}")
        assert err < 1e-3, err

# %% [markdown]
# Both paths match PyTorch to float32 rounding. The same check runs from the command line
# on real checkpoints: `python -m convert_weights SRC OUT --verify`.

# %%
print("parity OK", file=sys.stderr)
