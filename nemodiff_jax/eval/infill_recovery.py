"""Exact recovery of a span cut out of held-out answers, through :func:`nemodiff_jax.infill`.

    python -m nemodiff_jax.eval.infill_recovery [--model embedded] [--n 240] [--threshold TAU]

Per held-out example (``build_task_dataset("test", n)``, the split training never sees): a span
of 4-8 answer tokens is cut out at a random place with at least one answer token before it and
one after it; prefix = BOS + prompt + the answer head, suffix = up to 16 answer tokens after the
span; the span is filled (default: one token per step) and counted right iff it equals the cut
tokens exactly. Rows of one call each have their own prefix, span length and suffix.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from ..data.infill_cases import infill_cases as cases  # the benchmark's rows


def recovery(model, rows: list[dict], *, batch: int = 120, **knobs) -> dict:
    from ..decode.infill import infill

    hits, per_task, nfe, wall, comp = [], {}, [], 0.0, 0.0
    for i in range(0, len(rows), batch):
        chunk = rows[i:i + batch]
        r = infill(model, [c["prefix"] for c in chunk], [c["suffix"] for c in chunk],
                   length=[len(c["span"]) for c in chunk], **knobs)
        wall, comp = wall + r.wall_time, comp + r.compile_time
        for c, t, n in zip(chunk, r.tokens, r.nfe):
            ok = t == c["span"]
            hits.append(ok)
            nfe.append(n)
            per_task.setdefault(c["task"], []).append(ok)
    return {"cases": len(hits), "exact_recovery": float(np.mean(hits)), "mean_nfe": float(np.mean(nfe)),
            "per_task": {k: round(float(np.mean(v)), 3) for k, v in sorted(per_task.items())},
            "decode_time_s": round(wall, 3), "compile_time_s": round(comp, 3)}


def main(argv=None) -> None:
    from ..data.tasks import build_task_dataset
    from ..io.checkpoint import load

    ap = argparse.ArgumentParser(prog="python -m nemodiff_jax.eval.infill_recovery", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--n", type=int, default=240)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threshold", type=float, default=None, help="default: quota, one token per step")
    args = ap.parse_args(argv)
    model = load(args.model)
    rows = cases(model.tokenizer.hf, build_task_dataset("test", args.n), model.config.bos_token_id, seed=args.seed)
    print(json.dumps(recovery(model, rows, threshold=args.threshold), indent=1))


if __name__ == "__main__":
    main()
