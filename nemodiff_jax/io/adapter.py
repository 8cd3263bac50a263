"""The draft LoRA (NLD_SPEC 1.7, 3.4): a PEFT adapter on every layer's ``o_proj``.

Released Instruct checkpoints ship it as ``linear_spec_lora/`` (``adapter_config.json`` +
``adapter_model.safetensors``, keys ``base_model.model.encoder.layers.{i}.self_attn.o_proj.
lora_{A,B}.weight``, often fp32). In our tree it becomes ``layers.self_attn.lora_a``
``[L, q_width, r]`` and ``lora_b`` ``[L, r, H]``; the config carries ``lora_rank`` and
``lora_alpha`` (scale alpha / r). The keymap's LoRA entries do the layout change.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from ..model.config import NLDConfig
from .keymap import CheckpointError, ParamSpec, check_names_and_shapes, hf_param_specs
from .sources import TensorSource

ADAPTER_SUBDIR = "linear_spec_lora"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
PEFT_PREFIX = "base_model.model."


@dataclasses.dataclass(frozen=True)
class Adapter:
    """A validated PEFT adapter: where it is, its rank/alpha, and a lazy tensor source."""

    directory: Path
    rank: int
    alpha: float
    config: dict
    source: TensorSource
    dtype: str  # dtype of its tensors (kept as is on disk: fp32 adapters stay fp32)

    def specs(self, cfg: NLDConfig) -> list[ParamSpec]:
        return [s for s in hf_param_specs(self.with_config(cfg), include_lora=True) if s.lora]

    def with_config(self, cfg: NLDConfig) -> NLDConfig:
        return cfg.replace(lora_rank=self.rank, lora_alpha=self.alpha)


def find_adapter(directory: Path) -> Path | None:
    """The bundled ``linear_spec_lora/`` of an HF checkpoint directory, if it has one."""
    d = Path(directory) / ADAPTER_SUBDIR
    return d if (d / "adapter_config.json").is_file() else None


def open_adapter(directory: str | Path, cfg: NLDConfig) -> Adapter:
    """Read and check an adapter against the base config; one CheckpointError lists every problem."""
    directory = Path(directory)
    where = str(directory)
    cfg_path = directory / "adapter_config.json"
    if not cfg_path.is_file():
        raise CheckpointError([f"no adapter_config.json in {directory}"], where)
    try:
        acfg = json.loads(cfg_path.read_text())
    except ValueError as e:
        raise CheckpointError([f"cannot read adapter_config.json: {e}"], where) from e
    problems = _config_problems(acfg)
    files = [directory / n for n in ADAPTER_WEIGHTS if (directory / n).is_file()][:1]
    if not files:
        problems.append(f"no adapter weights ({' or '.join(ADAPTER_WEIGHTS)}) in {directory}")
        raise CheckpointError(problems, where)
    src = TensorSource(directory, files=files)
    problems += src.problems
    rank = acfg.get("r")
    if isinstance(rank, int) and not isinstance(rank, bool) and rank > 0:
        lcfg = cfg.replace(lora_rank=rank, lora_alpha=0.0)
        problems += _rank_and_layer_summary(src.shapes(), rank, cfg.num_layers)
        problems += check_names_and_shapes(lcfg, src.shapes(), lora_only=True, include_lora=True, dtypes=src.dtypes())
    if problems:
        raise CheckpointError(problems, where)
    dtypes = sorted(set(src.dtypes().values()))
    return Adapter(directory, rank, float(acfg["lora_alpha"]), acfg, src, dtypes[0] if len(dtypes) == 1 else "float32")


def _config_problems(acfg: dict) -> list[str]:
    problems = []
    r, alpha = acfg.get("r"), acfg.get("lora_alpha")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        problems.append(f"adapter_config.json: r must be a positive integer, got {r!r}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        problems.append(f"adapter_config.json: lora_alpha must be a number, got {alpha!r}")
    targets = acfg.get("target_modules")
    targets = [targets] if isinstance(targets, str) else list(targets or [])
    if targets != ["o_proj"]:
        problems.append(f"adapter_config.json: target_modules must be ['o_proj'] (the draft LoRA), got {targets}")
    for key, ok in (("use_dora", False), ("use_rslora", False), ("fan_in_fan_out", False)):
        if acfg.get(key, ok) != ok:
            problems.append(f"adapter_config.json: {key}={acfg[key]!r} is not supported")
    if acfg.get("bias", "none") != "none":
        problems.append(f"adapter_config.json: bias={acfg['bias']!r} is not supported (only 'none')")
    return problems


def _rank_and_layer_summary(shapes: dict[str, tuple[int, ...]], rank: int, num_layers: int) -> list[str]:
    """Say in one line each what a pile of per-key mismatches means: wrong rank, wrong depth."""
    problems = []
    ranks = sorted({s[0] for n, s in shapes.items() if n.endswith("lora_A.weight") and len(s) == 2})
    if ranks and ranks != [rank]:
        problems.append(f"adapter rank does not fit: adapter_config.json says r={rank}, lora_A tensors have rank {ranks}")
    layers = set()
    for n in shapes:
        parts = n.split(".")
        if len(parts) > 2 and parts[1] == "layers" and parts[2].isdigit():
            layers.add(int(parts[2]))
    if layers and layers != set(range(num_layers)):
        problems.append(f"adapter layer count does not fit: it covers {len(layers)} layer(s) (max index {max(layers)}), the model has {num_layers}")
    return problems
