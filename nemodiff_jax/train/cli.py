"""``nemodiff train --config FILE``: joint-objective training or draft-LoRA training from a JSON config.

The config's ``"mode"`` picks ``"joint"`` (default; :mod:`.loop`) or ``"draft_lora"``
(:mod:`.lora`). ``--export DIR`` writes the final parameters as an HF model directory.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def parse(argv):
    ap = argparse.ArgumentParser(prog="nemodiff train", description=__doc__)
    ap.add_argument("--config", required=True, help="JSON training config")
    ap.add_argument("--steps", type=int, help="override the number of steps")
    ap.add_argument("--out-dir", help="override out_dir (checkpoints, metrics.jsonl)")
    ap.add_argument("--export", help="write the trained model as an HF directory here")
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    raw = json.loads(Path(args.config).read_text())
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
        raise SystemExit(f"unknown mode {mode!r}; expected 'joint' or 'draft_lora'")
    if args.export:
        from .export import export_hf

        export_hf(args.export, cfg, params, tokenizer_dir=tok_dir)
        print(f"exported to {args.export}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
