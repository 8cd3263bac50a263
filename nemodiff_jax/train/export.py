"""Write trained parameters as an HF NLD directory (what ``nemodiff_jax.load(dir)`` reads).

Layout: ``config.json`` (:meth:`NLDConfig.to_hf_dict`), ``model.safetensors`` with the
canonical HF names and ``[out, in]`` matrices (:mod:`nemodiff_jax.io.keymap`), the draft LoRA
as a PEFT adapter in ``linear_spec_lora/``, and the tokenizer files, so the directory is
self-contained and ``nemodiff_jax.load(dir)`` reads it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np

from ..model.config import NLDConfig

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def default_tokenizer_dir() -> Path:
    from nemodiff_jax.data.tokenizer_train import TOKENIZER_DIR

    return TOKENIZER_DIR


def export_hf(
    out_dir: str | Path,
    cfg: NLDConfig,
    params,
    tokenizer_dir: str | Path | None = None,
    dtype: str = "float32",
) -> Path:
    """Write ``config.json``, ``model.safetensors`` (``dtype``), the draft LoRA as the PEFT
    adapter ``linear_spec_lora/`` when ``cfg.lora_rank > 0`` (the layout of the released NLD
    checkpoints, via :func:`convert_weights.export.export_model`) and the tokenizer files."""
    from convert_weights.export import export_model

    from ..model.forward import Model

    out = Path(out_dir)
    params = jax.tree.map(np.asarray, params)
    export_model(Model(cfg.replace(dtype=dtype), params), out, dtype=dtype, force=True)
    tok = Path(tokenizer_dir) if tokenizer_dir is not None else default_tokenizer_dir()
    for name in TOKENIZER_FILES:
        if (tok / name).is_file():
            shutil.copy2(tok / name, out / name)
    return out


def restore_run_params(run_dir: str | Path, step: int | None = None):
    """``(TrainConfig, params)`` from a training run directory (its train_config.json + orbax ckpt)."""
    import jax
    import orbax.checkpoint as ocp

    from .loop import _state_template, checkpoint_manager, config_from_dict
    from .optim import make_optimizer
    from ..model.forward import init_params

    raw = json.loads((Path(run_dir) / "train_config.json").read_text())
    raw["out_dir"] = str(run_dir)
    tc = config_from_dict(raw)
    mngr = checkpoint_manager(tc)
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise ValueError(f"no checkpoint under {run_dir}/ckpt")
    opt = make_optimizer(tc.optim, tc.steps)
    abstract = jax.eval_shape(lambda: _state_template(tc, init_params(tc.model, 0), opt))
    state = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    mngr.close()
    return tc, jax.tree.map(np.asarray, state["params"]), step


def main(argv=None) -> int:
    """``python -m nemodiff_jax.train.export --run runs/embedded --out DIR [--step N]``."""
    import argparse

    ap = argparse.ArgumentParser(description="export a training run's checkpoint as an HF directory")
    ap.add_argument("--run", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--step", type=int)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = ap.parse_args(argv)
    tc, params, step = restore_run_params(args.run, args.step)
    export_hf(args.out, tc.model, params, dtype=args.dtype)
    print(f"exported step {step} of {args.run} to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
