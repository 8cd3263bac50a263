"""``nemodiff infill``: fill N masks between a prefix and a suffix (:func:`nemodiff_jax.infill`)."""

from __future__ import annotations

import json

from .common import CLIError, consoles, formatter, generation_errors, load_model, note_random

EXAMPLES = """\
examples:
  nemodiff infill --prefix "reverse: a b c d =>" --suffix " b a" --length 2 --show-canvas
  nemodiff infill --prefix "sort: 3 1 2 =>" --suffix "" --length 6 --threshold 0.9 --json

The prefix is encoded like every prompt (BOS first); the suffix on its own, without BOS.
Default: one token per step (--steps = --length), the setting docs/EVAL.md measures; masks plus
suffix form one bidirectional window, and the model was trained on windows of one block."""


def add_infill(sub) -> None:
    p = sub.add_parser("infill", help="fill masks between a prefix and a suffix (diffusion infilling)",
                       description=EXAMPLES, formatter_class=formatter)
    p.add_argument("--model", default="embedded", metavar="PATH|embedded|random",
                   help="model directory, `embedded` (default) or `random`")
    p.add_argument("--prefix", required=True, help="text before the masks (BOS is prepended)")
    p.add_argument("--suffix", default="", help="text after the masks (default: none)")
    p.add_argument("--length", type=int, required=True, metavar="N", help="masks to fill")
    p.add_argument("--threshold", type=float, metavar="TAU",
                   help="commit every token with confidence >= TAU (default: quota schedule over --steps)")
    p.add_argument("--steps", type=int, metavar="S", help="quota schedule steps (default: N, one token per step)")
    p.add_argument("--policy", default="threshold", help="unmask policy (threshold, quota, margin, entropy, ...)")
    p.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 = greedy (default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print tokens, text and statistics as JSON")
    p.add_argument("--show-canvas", action="store_true", help="print the canvas after every denoising pass")
    p.set_defaults(func=cmd_infill)


def canvas_lines(model, result, row: int = 0) -> list[str]:
    """One line per pass: prefix, the filled span (``_`` where still masked), suffix."""
    tok = model.tokenizer
    piece = (lambda ids: tok.decode(ids)) if tok is not None else (lambda ids: " ".join(map(str, ids)))
    pl, n = result.prefix_len[row], len(result.tokens[row])
    pre, suf = result.canvas[row][:pl], result.canvas[row][pl + n:]
    lines = []
    for p in range(result.nfe[row] + 1):
        span = "".join(piece([t]) if c <= p else "_" for t, c in zip(result.tokens[row], result.commit_pass[row]))
        lines.append(f"pass {p:>2}: {piece(pre)}[{span}]{piece(suf)}")
    return lines


def cmd_infill(args) -> int:
    from ..decode.infill import infill

    out, err = consoles()
    model = load_model(args.model)
    note_random(model, err)
    if model.tokenizer is None:
        raise CLIError(f"the model at {model.path} has no tokenizer.json: use nd.infill with token ids")
    with generation_errors("infill"):
        r = infill(model, [args.prefix], [args.suffix], length=args.length, threshold=args.threshold,
                   steps=args.steps, policy=args.policy, temperature=args.temperature, seed=args.seed)
    speed = f"{args.length / r.wall_time:.1f} tok/s decode" if r.wall_time > 0 else "-"
    if args.json:
        print(json.dumps({"tokens": r.tokens[0], "text": r.texts[0], "nfe": r.nfe[0], "commit_pass": r.commit_pass[0],
                          "decode_time": r.wall_time, "compile_time": r.compile_time}))
        return 0
    if args.show_canvas:
        for line in canvas_lines(model, r):
            out.print(line, markup=False)
    else:
        out.print(model.tokenizer.decode(r.canvas[0]), markup=False)
    err.print(f"filled {args.length} tokens in {r.nfe[0]} passes | decode {r.wall_time * 1e3:.1f} ms ({speed}) | "
              f"compile {r.compile_time:.2f} s", markup=False, highlight=False)
    return 0
