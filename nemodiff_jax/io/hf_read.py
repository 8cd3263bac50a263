"""Open an HF NLD checkpoint directory and check all of it before reading any weight.

Shared by the port script and :func:`nemodiff_jax.load` so both refuse the same things
with the same message: config problems, unreadable files, missing/unexpected keys, shapes
that disagree with the config, unsupported dtypes and an adapter that does not fit, all in
one :class:`CheckpointError`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from nemodiff_jax.model.config import NLDConfig, config_from_hf_dict

from .keymap import CheckpointError, ParamSpec, check_names_and_shapes, hf_param_specs
from .adapter import Adapter, find_adapter, open_adapter
from .sources import TensorSource


@dataclasses.dataclass(frozen=True)
class HFCheckpoint:
    """A checked HF checkpoint: config (with the adapter's rank/alpha when there is one),
    the raw config.json dict, the base tensor source and the adapter."""

    directory: Path
    config: NLDConfig
    config_dict: dict
    source: TensorSource
    adapter: Adapter | None

    def base_specs(self) -> list[ParamSpec]:
        return hf_param_specs(self.config, include_lora=False)


def read_config(directory: Path, **overrides) -> tuple[NLDConfig, dict]:
    """config.json as an NLDConfig (a CheckpointError when it is missing or malformed)."""
    path = Path(directory) / "config.json"
    try:
        d = json.loads(path.read_text())
        return config_from_hf_dict(d, **overrides), d
    except FileNotFoundError:
        raise CheckpointError([f"no config.json in {directory}"], str(directory)) from None
    except (ValueError, TypeError) as e:  # bad JSON, a missing field, an unknown dtype
        raise CheckpointError([f"config.json: {e}"], str(directory)) from e


def open_hf(directory: str | Path, *, dtype: str | None = None, lora: str | Path | bool | None = None, **overrides) -> HFCheckpoint:
    """Check an HF checkpoint. ``lora``: None picks up ``linear_spec_lora/`` when present,
    False ignores it, a path names an adapter directory. ``dtype`` overrides the config's."""
    directory = Path(directory)
    if dtype is not None:
        overrides["dtype"] = dtype
    cfg, d = read_config(directory, **overrides)
    cfg = cfg.replace(lora_rank=0, lora_alpha=0.0)  # the adapter, not config.json, says
    src = TensorSource(directory)
    problems = list(src.problems)
    unreadable = frozenset(src.unreadable)
    if src.unknown_unreadable:  # a corrupt file without an index: its keys are not "missing", they are unread
        unreadable = frozenset(s.hf_name for s in hf_param_specs(cfg, include_lora=False))
    problems += check_names_and_shapes(
        cfg, src.shapes(), include_lora=False, dtypes=src.dtypes(), unreadable=unreadable
    )
    adapter_dir = find_adapter(directory) if lora is None or lora is True else (None if lora is False else Path(lora))
    if lora is True and adapter_dir is None:
        problems.append(f"no {directory}/linear_spec_lora/adapter_config.json")
    adapter = None
    if adapter_dir is not None:
        try:
            adapter = open_adapter(adapter_dir, cfg)
        except CheckpointError as e:
            problems += [f"LoRA {adapter_dir}: {p}" for p in e.problems]
    if problems:
        raise CheckpointError(problems, str(directory))
    if adapter is not None:
        cfg = adapter.with_config(cfg)
    return HFCheckpoint(directory, cfg, d, src, adapter)
