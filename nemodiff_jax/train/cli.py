"""``nemodiff train --config FILE``: joint-objective training or draft-LoRA training from a JSON config.

The config's ``"mode"`` picks ``"joint"`` (default; :mod:`.loop`) or ``"draft_lora"``
(:mod:`.lora`). ``--export DIR`` writes the final parameters as an HF model directory.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line; `nemodiff` prints it and exits with status 2
        raise ValueError(f"{message} (see `{self.prog} --help`)")


def parse(argv):
    ap = _Parser(prog="nemodiff train", description=__doc__)
    ap.add_argument("--config", required=True, help="JSON training config")
    ap.add_argument("--steps", type=int, help="override the number of steps")
    ap.add_argument("--out-dir", help="override out_dir (checkpoints, metrics.jsonl)")
    ap.add_argument("--export", help="write the trained model as an HF directory here")
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    path = Path(args.config)
    if not path.is_file():
        raise ValueError(f"--config {path}: " + ("is a directory" if path.is_dir() else "no such file"))
    try:
        raw = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"--config {path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"--config {path} must hold a JSON object, got {type(raw).__name__}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    mode = raw.pop("mode", "joint")
    for key, val in (("steps", args.steps), ("out_dir", args.out_dir)):
        if val is not None:
            raw[key] = val
    if args.no_progress:
        raw["progress"] = False
    if mode == "joint":
        from .loop import config_from_dict, train

        tc = config_from_dict(raw)
        state = train(tc)
        cfg, params = tc.model, state["params"]
        tok_dir = None
    elif mode == "draft_lora":
        from .lora import run_from_dict

        cfg, params, tok_dir = run_from_dict(raw)
    else:
        raise ValueError(f"train config field 'mode' must be 'joint' or 'draft_lora', got {mode!r}")
    if args.export:
        from .export import export_hf

        export_hf(args.export, cfg, params, tokenizer_dir=tok_dir)
        print(f"exported to {args.export}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
