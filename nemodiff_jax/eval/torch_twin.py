"""A torch twin of our greedy decoders, written the way the official NLD remote code runs them.

The model is transformers' own ``Ministral3ForCausalLM`` loaded from an HF-format export of one
of our models (the project's export code, :func:`nemodiff_jax.train.export.export_hf`): the
``encoder.*`` tensors become ``model.*`` and the ``diffusion_head`` becomes ``lm_head`` (NLD
uses one head for every mode). Decoding is a plain Python loop at batch 1 over transformers'
``DynamicCache``, cropped with ``DynamicCache.crop``, exactly the shape of the released
``ar_generate`` / ``linear_spec_generate`` (docs/ALGORITHMS.md, "AR decoding" and "Linear self-speculation"):

* :func:`twin_ar`: greedy AR, one token per forward.
* :func:`twin_linear_spec`: linear self-speculation at temperature 0 without the draft LoRA.
  Causal prefill (the first token, NFE 1); then per cycle a draft forward over
  ``[seed, M x (B-1)]`` (``seed`` = the last emitted token, not yet cached) that sees the cached
  prefix and the whole block (a custom 4D mask), whose K/V are dropped again (``crop`` back to
  ``L0``: the "peek"); a causal verify forward over the drafted block that writes its K/V;
  ``a = 1 +`` the run of ``verify_argmax[j] == block[j+1]``; emit ``verify_argmax[:a]``; crop the
  cache to ``L0 + a``; the new seed is the last emitted token. 2 NFE per cycle. With
  ``fused=True`` it runs our engine's start instead: the prefill and the first cycle's draft share
  one forward over ``[prompt, M x B]`` (the prompt causal, the masks bidirectional), one forward
  fewer per call; the tokens are the same.
* :func:`hf_generate`: transformers' ``model.generate(do_sample=False)`` (AR).

Each returns ``(tokens, forwards)``: the generated ids (cut after the first EOS, EOS kept, at
most ``max_new_tokens``) and the number of model forwards. Counting follows our engine
(:mod:`nemodiff_jax.decode.generate`): AR counts one forward per generated token (the prefill
yields the first one; no forward after the last), linear speculation counts the prefill plus
two per cycle (fused: the prefill with the first draft, then a verify, then two per later cycle).

Two deliberate choices that match our engine rather than the released HF text:

* the mask token is excluded from every argmax (as our decoders and SGLang do; the HF code
  does not). For :func:`hf_generate` this is ``suppress_tokens=[mask_id]``;
* the output is cut at ``max_new_tokens`` (HF's ``linear_spec_generate`` can return up to
  ``B - 1`` extra tokens from the last cycle).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["export_for_torch", "load_twin", "twin_from_model", "twin_ar", "twin_linear_spec", "hf_generate"]


def export_for_torch(model, directory) -> Path:
    """Write ``model`` (a :class:`nemodiff_jax.Model`) as an HF NLD directory, float32."""
    from nemodiff_jax.train.export import export_hf

    return export_hf(Path(directory), model.config, model.params, dtype="float32")


def _hf_config(d: dict):
    """A ``Ministral3Config`` with our forward: for ``rope_type`` default the Llama-4 query scale
    is switched off (beta 0), which is what our config reader does (``llama4_scaling_beta`` 0)."""
    from transformers import Ministral3Config

    rope = dict(d.get("rope_parameters") or {"rope_type": "default", "rope_theta": d.get("rope_theta", 10000.0)})
    rope.setdefault("llama_4_scaling_beta", 0.0)
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "bos_token_id",
            "eos_token_id", "pad_token_id", "tie_word_embeddings", "hidden_act")
    kw = {k: d[k] for k in keys if k in d}
    cfg = Ministral3Config(**kw, rope_parameters=rope, sliding_window=None)
    # Read by the attention's Llama-4 scale (a no-op at beta 0); set after validation, which
    # does not know the key for rope_type default.
    cfg.rope_parameters.setdefault("original_max_position_embeddings", d["max_position_embeddings"])
    cfg.mask_token_id = int(d.get("mask_token_id", -1))
    return cfg


def load_twin(hf_dir, attn_implementation: str = "sdpa"):
    """transformers' ``Ministral3ForCausalLM`` (float32, eval) from an HF NLD directory."""
    import torch
    from safetensors.torch import load_file
    from transformers import Ministral3ForCausalLM

    hf_dir = Path(hf_dir)
    d = json.loads((hf_dir / "config.json").read_text())
    cfg = _hf_config(d)
    cfg._attn_implementation = attn_implementation
    files = sorted(hf_dir.glob("model*.safetensors"))
    sd = {}
    for f in files:
        sd.update(load_file(str(f)))
    state = {}
    for k, v in sd.items():
        if k.startswith("encoder."):
            state["model." + k[len("encoder."):]] = v
        elif k == "diffusion_head.weight":
            state["lm_head.weight"] = v
        else:
            raise ValueError(f"unexpected tensor {k!r} in {hf_dir}")
    with torch.device("meta"):
        model = Ministral3ForCausalLM(cfg)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    model.eval()
    # load_state_dict(assign=True) leaves non-persistent buffers (rotary inv_freq) on meta.
    model.model.rotary_emb = type(model.model.rotary_emb)(cfg)
    return model


def twin_from_model(model, attn_implementation: str = "sdpa"):
    """Export ``model`` to a temporary HF directory and load the torch twin from it."""
    with tempfile.TemporaryDirectory(prefix="nemodiff_twin_") as tmp:
        return load_twin(export_for_torch(model, Path(tmp) / "hf"), attn_implementation)


# ---------------------------------------------------------------------------------------


def _mask_id(model, mask_id):
    return getattr(model.config, "mask_token_id", -1) if mask_id is None else mask_id


def _argmax(logits, mask_id: int):
    """Greedy choice over ``[..., V]``, the mask token excluded."""
    import torch

    if 0 <= mask_id < logits.shape[-1]:
        logits = logits.clone()
        logits[..., mask_id] = -torch.inf
    return logits.argmax(-1)


def _crop_to(cache, length: int) -> None:
    """Keep the first ``length`` positions (transformers 5: ``crop(-n)`` removes n tokens)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def _ids_tensor(ids):
    import torch

    x = torch.as_tensor(np.asarray(ids, dtype=np.int64)).reshape(1, -1)
    if x.shape[1] == 0:
        raise ValueError("ids must hold at least one token")
    return x


def _cache_kwarg(model) -> str:
    """``cache`` (transformers >= 5.2x) or the older ``past_key_values``, without deprecation warnings."""
    import inspect

    name = getattr(model, "_twin_cache_kwarg", None)
    if name is None:
        name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        model._twin_cache_kwarg = name
    return name


def _forward(model, ids, start: int, cache, mask=None, last_only: bool = False):
    import torch

    pos = torch.arange(start, start + ids.shape[1]).unsqueeze(0)
    out = model(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=True,
                logits_to_keep=1 if last_only else 0, **{_cache_kwarg(model): cache})
    return out.logits


def twin_ar(model, ids, max_new_tokens: int, eos: int, *, mask_id: int | None = None) -> tuple[list[int], int]:
    """Greedy AR with a DynamicCache: prefill, then one token per forward, batch 1."""
    import torch
    from transformers import DynamicCache

    m = _mask_id(model, mask_id)
    x = _ids_tensor(ids)
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        logits = _forward(model, x, 0, cache, last_only=True)
        forwards, out, length = 1, [], x.shape[1]
        while True:
            tok = int(_argmax(logits[0, -1], m))
            out.append(tok)
            if tok == eos or len(out) >= max_new_tokens:
                return out, forwards
            logits = _forward(model, torch.tensor([[tok]]), length, cache)
            length += 1
            forwards += 1


def twin_linear_spec(
    model, ids, max_new_tokens: int, block_length: int, mask_id: int | None, eos: int, *, fused: bool = False
) -> tuple[list[int], int]:
    """The released ``linear_spec_generate`` at temperature 0, threshold 0, no draft LoRA, batch 1
    (``fused``: with our engine's start, the prefill and the first draft in one forward)."""
    import torch
    from transformers import DynamicCache

    m = _mask_id(model, mask_id)
    bk = int(block_length)
    x = _ids_tensor(ids)
    p = x.shape[1]
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        first_draft = None
        if fused:
            # The prefill and the first draft in one forward over [prompt, M x B]: the prompt
            # causal, the masks seeing everything (a custom 4D mask). NFE 1.
            window = torch.ones((1, 1, p + bk, p + bk), dtype=torch.bool)
            window[0, 0, :p] = torch.ones((p, p + bk), dtype=torch.bool).tril()
            masks = torch.full((1, bk), m, dtype=torch.long)
            logits = _forward(model, torch.cat([x, masks], dim=1), 0, cache, mask=window)[0]
            _crop_to(cache, p)  # the masks' K/V are not kept
            first_draft = _argmax(logits[p:], m)
        else:
            logits = _forward(model, x, 0, cache, last_only=True)[0]  # causal prefill: NFE 1
        forwards = 1
        seed = int(_argmax(logits[-1] if first_draft is None else logits[p - 1], m))
        out = [seed]
        if seed == eos or len(out) >= max_new_tokens:
            return out, forwards
        while True:
            l0 = cache.get_seq_length()
            block = torch.full((1, bk), m, dtype=torch.long)
            block[0, 0] = seed
            if first_draft is not None:
                draft, first_draft = first_draft, None
            else:
                # Draft: every block query sees the cached prefix and the whole block.
                peek = torch.ones((1, 1, bk, l0 + bk), dtype=torch.bool)
                draft = _argmax(_forward(model, block, l0, cache, mask=peek)[0], m)
                forwards += 1
                _crop_to(cache, l0)  # the draft's K/V are not kept
            block[0, 1:] = draft[1:]  # position j predicts position j (no shift)
            # Verify: causal over the drafted block, K/V written.
            ar = _argmax(_forward(model, block, l0, cache)[0], m)
            forwards += 1
            ok = (ar[:-1] == block[0, 1:]).to(torch.int64)
            a = 1 + int(torch.cumprod(ok, 0).sum())
            emitted = ar[:a].tolist()
            _crop_to(cache, l0 + a)  # seed + the matched drafts; the bonus token is the next seed
            for t in emitted:
                out.append(int(t))
                if t == eos or len(out) >= max_new_tokens:
                    return out, forwards
            seed = out[-1]


def hf_generate(model, ids, max_new_tokens: int, eos: int, *, mask_id: int | None = None) -> tuple[list[int], int]:
    """transformers' ``generate(do_sample=False)``; forwards counted with a forward pre-hook."""
    import torch

    m = _mask_id(model, mask_id)
    x = _ids_tensor(ids)
    calls = [0]

    def count(*_args, **_kw):
        calls[0] += 1

    handle = model.register_forward_pre_hook(count)
    try:
        with torch.inference_mode():
            seq = model.generate(
                x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=int(max_new_tokens),
                eos_token_id=int(eos), pad_token_id=int(model.config.pad_token_id or 0),
                suppress_tokens=[m] if 0 <= m < model.config.vocab_size else None,
                temperature=None, top_p=None, top_k=None,
            )
    finally:
        handle.remove()
    new = seq[0, x.shape[1]:].tolist()
    if eos in new:
        new = new[: new.index(eos) + 1]
    return [int(t) for t in new], calls[0]
