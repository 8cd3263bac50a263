"""``nemodiff eval``, ``nemodiff sweep`` and ``nemodiff oracle`` (wired into the ``nemodiff`` CLI).

Each ``*_main(argv)`` parses its own arguments, runs, prints a table and writes JSON/CSV
(and the sweep's PNG/SVG plot) under ``--out``; it returns 0. ``--model`` takes ``embedded``,
a model directory, or ``random:tiny`` (a random model, for smoke tests).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Sequence

from .. import guard


class Parser(argparse.ArgumentParser):
    """Usage errors as one line (a ValueError: ``nemodiff`` prints it and exits with status 2)."""

    def error(self, message):
        raise ValueError(f"{message} (see `{self.prog} --help`)")


def _csv(cast=str):
    def parse(s: str):
        return tuple(cast(x) for x in s.split(",") if x.strip())

    return parse


def _bool(s: str) -> bool:
    low = s.strip().lower()
    if low in ("on", "true", "1", "yes"):
        return True
    if low in ("off", "false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected on/off, got {s!r}")


def _float_or_none(s: str):
    return None if s.strip().lower() in ("none", "null", "") else float(s)


def _common(p: argparse.ArgumentParser, out_default: str) -> None:
    p.add_argument("--model", default="embedded", help="embedded | model directory | random:tiny")
    p.add_argument("--dtype", default=None, help="override the parameter dtype (float32, bfloat16)")
    p.add_argument("--tasks", type=_csv(), default=("synthetic",),
                   help="comma list of: synthetic (all tasks), task names (reverse,sort,...), .jsonl files")
    p.add_argument("--n", type=int, default=8, help="examples per synthetic task / cap per JSONL file (0: all)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=out_default, help="output directory")
    p.add_argument("--no-progress", action="store_true")


def _load(args):
    from .models import load_model

    return load_model(args.model, dtype=args.dtype)


def _tasks(args):
    from .datasets import load_tasks

    return load_tasks(list(args.tasks), n=args.n, seed=0)


def eval_main(argv: Sequence[str] | None = None) -> int:
    """``nemodiff eval --model M --tasks T --modes ar,diffusion,... --batch-size N [knobs] --out DIR``."""
    from .runner import evaluate

    p = Parser(prog="nemodiff eval", description="Batched jitted evaluation of every decoding mode.")
    _common(p, "runs/eval")
    p.add_argument("--modes", type=_csv(), default=("ar", "diffusion", "linear_spec", "quadratic_spec"),
                   help="comma list; a mode may carry knobs: 'diffusion:threshold=0.7;block_length=16' (';' inside)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--block-length", type=int, default=None)
    p.add_argument("--threshold", type=_float_or_none, default=0.9,
                   help="diffusion confidence threshold, default 0.9 as the reference eval harness; 'none': quota schedule")
    p.add_argument("--policy", default=None, help="diffusion unmask policy (threshold, quota, margin, entropy, ...)")
    p.add_argument("--gamma", type=float, default=None, help="eb policy entropy budget")
    p.add_argument("--draft-threshold", type=float, default=None, help="linear speculation draft threshold")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--lora", type=_bool, default=None, help="on/off (default: on when the model has a LoRA)")
    p.add_argument("--max-thinking-tokens", type=int, default=None)
    p.add_argument("--end-think-token-id", type=int, default=None)
    p.add_argument("--no-warmup", action="store_true", help="time the first (compiling) batch too")
    p.add_argument("--from-harness", type=_csv(), default=None, metavar="PATHS",
                   help="read lm-evaluation-harness output instead of running (comma list of --output_path "
                        "directories or results_*.json files, one run per mode); writes the same files")
    p.add_argument("--metric", default=None, help="with --from-harness: the harness metric reported as accuracy "
                   "(name or name,filter; default: the first the harness lists)")
    p.add_argument("--plot", default=None, help="also draw accuracy vs TPF per mode here (PNG, SVG beside it)")
    args = p.parse_args(argv)
    guard.writable_dir(args.out)
    if args.from_harness:
        from .harness import read_harness

        res = read_harness(list(args.from_harness), metric=args.metric)
        paths = res.write(args.out)
        print(res.table())
        return _plot_eval(res, args, paths)
    model = _load(args)
    knobs = dict(
        max_new_tokens=args.max_new_tokens, seed=args.seed, block_length=args.block_length, threshold=args.threshold,
        policy=args.policy, draft_threshold=args.draft_threshold, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, lora=args.lora, max_thinking_tokens=args.max_thinking_tokens,
        end_think_token_id=args.end_think_token_id,
        policy_params={"gamma": args.gamma} if args.gamma is not None else None,
    )
    modes = tuple(m.replace(";", ",") for m in args.modes)
    res = evaluate(model, _tasks(args), modes=modes, batch_size=args.batch_size, warmup=not args.no_warmup,
                   progress=not args.no_progress, out_dir=args.out, **{k: v for k, v in knobs.items() if v is not None})
    print(res.table())
    print(f"compiles per mode: {res.compiles}")
    return _plot_eval(res, args, {"json": f"{args.out}/results.json", "csv": "metrics.csv", "samples": "samples.jsonl"})


def _plot_eval(res, args, paths: dict) -> int:
    if args.plot:
        from .plot import plot_eval

        drawn = plot_eval(res.metrics, Path(args.plot).with_suffix(""))
        paths = {**paths, **drawn}
    print("wrote " + ", ".join(str(v) for v in paths.values()))
    return 0


def sweep_main(argv: Sequence[str] | None = None) -> int:
    """``nemodiff sweep --policies ... --thresholds ... --block-lengths ... --temperatures ... --lora off,on``."""
    from .sweep import SweepGrid, check_grid, run_sweep

    p = Parser(prog="nemodiff sweep", description="Diffusion sampler grid: accuracy vs TPF, Pareto front.")
    _common(p, "runs/sweep")
    p.add_argument("--policies", type=_csv(), default=("threshold", "quota"))
    p.add_argument("--thresholds", type=_csv(float), default=(0.5, 0.7, 0.9))
    p.add_argument("--gammas", type=_csv(float), default=(0.5, 1.0, 2.0), help="eb entropy budgets")
    p.add_argument("--block-lengths", type=_csv(int), default=(8,))
    p.add_argument("--temperatures", type=_csv(float), default=(0.0,))
    p.add_argument("--lora", type=_csv(_bool), default=(False,), help="off | on | off,on")
    p.add_argument("--baselines", type=_csv(), default=("ar",), help="modes run once beside the grid ('' for none)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-fuse", action="store_true", help="one call per threshold (exact per-row timing)")
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument("--oracle", action="store_true", help="add the speed-of-light TPF per block length")
    p.add_argument("--plot", default=None, help="also copy the PNG plot here (SVG beside it), e.g. docs/sweep.png")
    p.add_argument("--title", default=None)
    p.add_argument("--y", choices=("auto", "accuracy", "similarity"), default="auto",
                   help="plotted metric; auto = accuracy unless it is 0 everywhere, then similarity")
    p.add_argument("--from", dest="from_json", default=None,
                   help="re-plot a finished sweep's sweep.json instead of running the grid")
    args = p.parse_args(argv)
    if args.from_json:
        import json

        from .sweep import SweepResult

        saved = json.loads(Path(args.from_json).read_text())
        res = SweepResult(saved["config"], saved["rows"])
        return _write_sweep(res, args)
    grid = SweepGrid(tuple(args.policies), tuple(args.thresholds), tuple(args.block_lengths),
                     tuple(args.temperatures), tuple(args.lora), tuple(args.gammas))
    check_grid(grid, args.batch_size, args.max_new_tokens)  # before the model loads
    guard.writable_dir(args.out)
    model = _load(args)
    try:
        res = run_sweep(model, _tasks(args), grid, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                        seed=args.seed, baselines=tuple(args.baselines), fuse=not args.no_fuse,
                        warmup=not args.no_warmup, oracle=args.oracle, progress=not args.no_progress, title=args.title)
    except guard.Interrupted as e:  # the rows finished so far, marked partial (no plot)
        e.result.write(args.out, plot=False)
        e.partial = args.out
        raise
    return _write_sweep(res, args)


def _write_sweep(res, args) -> int:
    paths = res.write(args.out, y=args.y)
    print(res.table())
    if args.plot:
        dest = Path(args.plot)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(paths["png"], dest.with_suffix(".png"))
        shutil.copyfile(paths["svg"], dest.with_suffix(".svg"))
        paths["copy"] = str(dest)
    print("wrote " + ", ".join(paths.values()))
    return 0


def oracle_main(argv: Sequence[str] | None = None) -> int:
    """``nemodiff oracle --block-length 8 --thresholds 0.9``: SOL TPF beside threshold sampling."""
    from .oracle_report import oracle_report
    from .oracle import check_oracle_args

    p = Parser(prog="nemodiff oracle", description="Speed-of-light TPF (docs/ALGORITHMS.md, 'Speed of light') vs threshold sampling.")
    _common(p, "runs/oracle")
    p.set_defaults(n=2)
    p.add_argument("--block-length", type=int, default=8)
    p.add_argument("--thresholds", type=_csv(float), default=(0.9,))
    p.add_argument("--search", choices=("auto", "exact", "beam"), default="auto")
    p.add_argument("--beam", type=int, default=None, help="beam width (default: max(7, block length - 1))")
    p.add_argument("--budget", type=int, default=2048, help="canvas forwards per block")
    p.add_argument("--lora", type=_bool, default=False, help="draft LoRA in the denoise passes (default off)")
    args = p.parse_args(argv)
    check_oracle_args(args.block_length, args.thresholds, args.beam, args.budget)
    guard.writable_dir(args.out)
    model = _load(args)
    rep = oracle_report(model, _tasks(args), block_length=args.block_length, max_new_tokens=args.max_new_tokens,
                        thresholds=tuple(args.thresholds), mode=args.search, beam=args.beam, budget=args.budget,
                        lora=args.lora, progress=not args.no_progress, out_dir=args.out)
    print(rep.table())
    print({k: round(v, 3) if isinstance(v, float) else v for k, v in rep.summary.items()})
    print(f"wrote {args.out}/oracle.json, oracle.csv")
    return 0
