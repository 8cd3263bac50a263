"""``--verify``: run the same short inputs through transformers and through our model.

The reference is transformers' own ``Ministral3Model`` built from an HF directory's
config.json and weights (plus the head, plus the LoRA as a forward hook on ``o_proj``), so
a layout mistake in the port shows up as a logit difference. Both sides run in the stored
dtype; the bar is relative to the largest reference logit and depends on that dtype.
Torch runs first and is freed before JAX loads, so the peak is one model, not two.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import numpy as np

from nemodiff_jax.io.hf_read import open_hf
from nemodiff_jax.io.adapter import Adapter

# max |ours - torch| / max(1, max |torch|); fp32 differs by summation order only.
BARS = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 5e-2}


class VerifyError(ValueError):
    pass


def available() -> bool:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def _to_torch(arr: np.ndarray, dtype: str):
    import torch

    tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    if arr.dtype.name == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(arr).view(np.int16)).view(torch.bfloat16).to(tdt)
    return torch.from_numpy(np.ascontiguousarray(arr)).to(tdt)


def torch_reference(hf_dir: Path, dtype: str, layers: int | None = None, adapter_dir: Path | None = None):
    """``(encoder, head, lora_switch)`` from an HF NLD directory, in ``dtype``; only the first
    ``layers`` decoder layers when given. ``lora_switch(on)`` turns the adapter hook on/off."""
    import torch
    from transformers import Ministral3Config, Ministral3Model
    from transformers.models.ministral3.modeling_ministral3 import Ministral3RotaryEmbedding

    ckpt = open_hf(hf_dir, lora=adapter_dir if adapter_dir is not None else False)
    src_cfg = json.loads((Path(hf_dir) / "config.json").read_text())
    known = set(Ministral3Config().to_dict())
    kw = {k: v for k, v in src_cfg.items() if k in known and k not in ("architectures", "model_type", "auto_map")}
    depth = ckpt.config.num_layers if layers is None else min(layers, ckpt.config.num_layers)
    kw["num_hidden_layers"] = depth
    hf_cfg = Ministral3Config(**kw)
    hf_cfg._attn_implementation = "eager"
    with torch.device("meta"):  # no random init of weights we are about to replace
        encoder = Ministral3Model(hf_cfg)
    state = {}
    for name in ckpt.source.names():
        parts = name.split(".")
        if parts[0] != "encoder" or (parts[1] == "layers" and int(parts[2]) >= depth):
            continue
        state[name[len("encoder."):]] = _to_torch(ckpt.source.get(name), dtype)
    encoder.load_state_dict(state, strict=True, assign=True)
    encoder.rotary_emb = Ministral3RotaryEmbedding(hf_cfg)  # its buffers are not in the checkpoint
    encoder.eval()
    head = _to_torch(ckpt.source.get("diffusion_head.weight"), dtype)
    switch = _lora_hooks(encoder, ckpt.adapter, depth, dtype) if ckpt.adapter else None
    return encoder, head, switch


def _lora_hooks(encoder, adapter: Adapter, depth: int, dtype: str):
    """o_proj(x) + (alpha / r) * B(A x) on every layer while switched on (docs/ALGORITHMS.md, "Draft LoRA")."""
    import torch

    state = {"on": False}
    scale = adapter.alpha / adapter.rank
    for i in range(depth):
        pre = f"encoder.layers.{i}.self_attn.o_proj."
        a = _to_torch(adapter.source.get(pre + "lora_A.weight"), dtype)
        b = _to_torch(adapter.source.get(pre + "lora_B.weight"), dtype)

        def hook(mod, inputs, output, a=a, b=b):
            if not state["on"]:
                return output
            return output + scale * torch.nn.functional.linear(torch.nn.functional.linear(inputs[0], a), b)

        encoder.layers[i].self_attn.o_proj.register_forward_hook(hook)
    return lambda on: state.__setitem__("on", on)


def torch_logits(encoder, head, ids: np.ndarray, bidirectional: bool) -> np.ndarray:
    import torch

    x = torch.as_tensor(ids, dtype=torch.long)
    with torch.no_grad():
        if bidirectional:
            mask = torch.zeros((x.shape[0], 1, x.shape[1], x.shape[1]), dtype=head.dtype)
            hidden = encoder(input_ids=x, attention_mask=mask).last_hidden_state
        else:
            hidden = encoder(input_ids=x).last_hidden_state
        return torch.nn.functional.linear(hidden, head).float().numpy()


def compare(
    hf_dir: str | Path,
    jax_dir: str | Path,
    *,
    dtype: str | None = None,
    layers: int | None = None,
    length: int = 16,
    seed: int = 0,
) -> dict:
    """Max abs logit difference per mode (causal, bidirectional, and bidirectional+LoRA when
    the JAX side has one) between the HF directory and the converted one, both run in
    ``dtype`` (default: the converted one's; pass the export dtype after ``--to-hf --dtype``).
    Raises VerifyError above the bar."""
    import nemodiff_jax as nd

    from nemodiff_jax.io.hf_read import read_config

    hf_dir, jax_dir = Path(hf_dir), Path(jax_dir)
    cfg, _ = read_config(jax_dir, **({"dtype": dtype} if dtype else {}))
    depth = cfg.num_layers if layers is None else min(layers, cfg.num_layers)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.vocab_size, (2, length))
    modes = [("causal", False, False), ("bidirectional", True, False)] + ([("bidirectional+lora", True, True)] if cfg.lora_rank else [])
    adapter_dir = _adapter_dir(hf_dir, jax_dir) if cfg.lora_rank else None

    encoder, head, switch = torch_reference(hf_dir, cfg.dtype, depth, adapter_dir)
    want = {}
    for name, bidir, lora in modes:
        if switch:
            switch(lora)
        want[name] = torch_logits(encoder, head, ids, bidir)
    del encoder, head, switch
    gc.collect()

    model = nd.load(jax_dir, dtype=dtype) if depth == cfg.num_layers else _first_layers(jax_dir, cfg, depth)
    bar = BARS[cfg.dtype]
    result = {}
    for name, bidir, lora in modes:
        got = np.asarray(nd.forward_logits(model, ids, mode="bidirectional" if bidir else "causal", lora=lora))
        result[name] = check_logits(name, got, want[name], bar, cfg.dtype)
    return result


def check_logits(name: str, got: np.ndarray, want: np.ndarray, bar: float, dtype: str) -> float:
    """Max abs difference, or a VerifyError: above the bar, or any NaN/Inf on either side (a NaN
    difference compares False against any bar, so it is checked first)."""
    for side, arr in (("ours", got), ("transformers", want)):
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise VerifyError(f"{name} logits ({side}) hold {bad} NaN/Inf value(s): the weights or the port are broken")
    scale = max(1.0, float(np.abs(want).max()))
    diff = float(np.abs(got - want).max())
    if not diff <= bar * scale:
        raise VerifyError(f"{name} logits differ from transformers by {diff:.3g} (bar {bar * scale:.3g} for {dtype})")
    return diff


def _first_layers(jax_dir: Path, cfg, depth: int):
    """The converted model cut to its first ``depth`` layers, reading only those slices."""
    from nemodiff_jax import Model

    from nemodiff_jax.io.jax_format import LeafReader, to_device
    from nemodiff_jax.io.keymap import assemble_params, hf_param_specs
    from nemodiff_jax.io.jax_format import np_dtype

    cut = cfg.replace(num_layers=depth)
    reader = LeafReader(jax_dir)
    by_name = {s.hf_name: s for s in hf_param_specs(cut)}
    tree = assemble_params(cut, lambda name: reader.read(by_name[name]), dtype=np_dtype(cfg.dtype))
    return Model(cut, to_device(tree), None, str(jax_dir))


def _adapter_dir(hf_dir: Path, jax_dir: Path) -> Path:
    """The adapter the HF side should use: the bundled one, else the one the manifest names."""
    from nemodiff_jax.io.adapter import find_adapter

    found = find_adapter(hf_dir)
    if found is not None:
        return found
    manifest = json.loads((jax_dir / "manifest.json").read_text())
    return Path(manifest["lora"]["source"])
