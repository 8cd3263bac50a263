"""``nemodiff demo``: every mode on one model for a few prompts, side by side.

The point of the project in one screen: the same checkpoint decoded four ways, with the cost
of each (forward passes, tokens per forward, tokens per second) and whether the speculative
modes reproduce AR decoding exactly, as they should at temperature 0.
"""

from __future__ import annotations

import json

from .common import MODES, CLIError, busy, consoles, encode_prompt, formatter, load_model, random_model, run_generate

# Prompts in the shipped model's training format (nemodiff_jax/data/tasks.py): `<bos> prompt`.
DEFAULT_PROMPTS = (
    "reverse: q w e r t y u i o p a s d f g h =>",
    "sort: 3 1 4 1 5 9 2 6 5 3 5 8 9 7 9 3 =>",
    "replace a with z: b a n a n a s a r e a t a s t y =>",
)
EXAMPLES = """\
examples:
  nemodiff demo
  nemodiff demo --prompt "reverse: a b c d e f g h i j k l m n o p =>" --modes ar,linear_spec
  nemodiff demo --model ./NLD-8B --prompt "Write a haiku about JAX." --chat --max-new-tokens 128
  nemodiff demo --json > demo.json

Timings exclude compilation: each mode runs once untimed first (--no-warmup to skip).
Falls back to a random-weight model, with a note, when the shipped model is absent."""
FALLBACK_NOTE = ("The embedded model is not present, so this demo runs a small RANDOM-weight model: its text "
                 "is gibberish, but forward passes, TPF and 'identical to AR' still show how the modes behave. "
                 "Train the embedded model (`nemodiff train --help`) or pass --model DIR.")


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="every mode on the shipped model, side by side", epilog=EXAMPLES,
                       description="Run every decoding mode on a few prompts and compare them.",
                       formatter_class=formatter)
    p.add_argument("--model", default=None, metavar="PATH|embedded|random",
                   help="model (default: embedded, else a random model with a note)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="parameter dtype override")
    p.add_argument("--prompt", action="append", metavar="TEXT", help="a prompt (repeatable; default: 3 task prompts)")
    p.add_argument("--chat", action="store_true", help="wrap prompts in the chat template")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    p.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="default 64")
    p.add_argument("--block-length", type=int, metavar="B", help="block for diffusion/speculation (default: config)")
    p.add_argument("--threshold", type=float, default=0.9, metavar="TAU", help="diffusion threshold (default 0.9)")
    p.add_argument("--no-warmup", action="store_true", help="time the first (compiling) call too")
    p.add_argument("--check", action="store_true", help="exit 1 if a speculative mode differs from AR")
    p.add_argument("--json", action="store_true", help="print the runs as JSON instead of tables")
    p.set_defaults(func=cmd_demo)


def first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def identity(mode: str, tokens: list[int], ar: list[int] | None) -> str:
    if mode == "ar":
        return "(reference)"
    if ar is None or mode not in ("linear_spec", "quadratic_spec"):
        return "—"
    diff = first_difference(tokens, ar)
    return "yes" if diff is None else f"NO (from token {diff})"


def cmd_demo(args) -> int:
    console, err = consoles()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise CLIError(f"--modes: unknown {bad} (choose from {', '.join(MODES)})")
    note = None
    with busy(err, "loading the model ..."):
        if args.model is None:
            try:
                model = load_model("embedded", args.dtype)
            except CLIError:
                model, note = random_model(dtype=args.dtype), FALLBACK_NOTE
        else:
            model = load_model(args.model, args.dtype)
    if note:
        from rich.panel import Panel

        err.print(Panel(note, title="note", border_style="yellow"))
    texts = args.prompt or list(DEFAULT_PROMPTS)
    prompts = [encode_prompt(model, t, args.chat) for t in texts]
    runs = run_all(model, prompts, modes, args, err)
    bad_identity = [r for r in runs if r["identical_to_ar"].startswith("NO")]
    if args.json:
        print(json.dumps(dict(model=model.path, random_fallback=note is not None, prompts=texts, runs=runs),
                         ensure_ascii=False))
    else:
        render(console, model, texts, modes, runs)
    return 1 if (args.check and bad_identity) else 0


def run_all(model, prompts, modes, args, err) -> list[dict]:
    """One generate() call per (mode, prompt), after an untimed warm-up per mode."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    warm = 0 if args.no_warmup else 1
    runs, ar_tokens = [], {}
    ordered = sorted(modes, key=lambda m: m != "ar")  # AR first: it is the reference
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err, transient=True, disable=not err.is_terminal)
    with progress:
        task = progress.add_task("demo", total=len(ordered) * (len(prompts) + warm))
        for mode in ordered:
            kw = dict(mode=mode, max_new_tokens=args.max_new_tokens)
            if args.block_length:
                kw["block_length"] = args.block_length
            if mode == "diffusion" and args.threshold is not None:
                kw["threshold"] = args.threshold
            compile_s = 0.0
            if warm:
                progress.update(task, description=f"{mode}: compiling")
                compile_s = run_generate(model, [prompts[0]], kw, "demo").compile_time
                progress.advance(task)
            for i, ids in enumerate(prompts):
                progress.update(task, description=f"{mode}: prompt {i + 1}/{len(prompts)}")
                r = run_generate(model, [ids], kw, "demo")
                compile_s += r.compile_time
                progress.advance(task)
                toks = r.tokens[0]
                if mode == "ar":
                    ar_tokens[i] = toks
                runs.append(dict(mode=mode, prompt_index=i, tokens=toks, text=(r.texts or [None])[0],
                                 nfe=r.nfe[0], tpf=r.tpf[0], wall_time=r.wall_time, compile_time=r.compile_time,
                                 tokens_per_s=len(toks) / r.wall_time if r.wall_time > 0 else None,
                                 identical_to_ar=identity(mode, toks, ar_tokens.get(i))))
            runs[-1]["mode_compile_time"] = compile_s
    return runs


def _clip(text: str | None, limit: int = 240) -> str:
    if text is None:
        return "(no tokenizer)"
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render(console, model, texts, modes, runs) -> None:
    """One side-by-side table per prompt (a column per mode), then a summary per mode."""
    from rich.table import Table

    by = {(r["mode"], r["prompt_index"]): r for r in runs}
    for i, text in enumerate(texts):
        table = Table(title=f"prompt {i + 1}: {_clip(text, 120)}", show_lines=True, title_justify="left")
        table.add_column("", style="bold", no_wrap=True)
        for m in modes:
            table.add_column(m, overflow="fold", ratio=1)
        cells = [by[(m, i)] for m in modes]
        table.add_row("output", *[_clip(r["text"]) for r in cells])
        table.add_row("forward passes", *[str(r["nfe"]) for r in cells])
        table.add_row("tokens", *[str(len(r["tokens"])) for r in cells])
        table.add_row("TPF", *[f"{r['tpf']:.2f}" for r in cells])
        table.add_row("decode tokens/s", *[f"{r['tokens_per_s']:.1f}" if r["tokens_per_s"] else "—" for r in cells])
        table.add_row("identical to AR", *[r["identical_to_ar"] for r in cells])
        console.print(table)
    summary = Table(title=f"summary · {model.path}", title_justify="left")
    for col in ("mode", "mean TPF", "decode tokens/s", "compile s", "identical to AR"):
        summary.add_column(col)
    for m in modes:
        rs = [r for r in runs if r["mode"] == m]
        wall = sum(r["wall_time"] for r in rs)
        same = [r["identical_to_ar"] for r in rs]
        ident = same[0] if m == "ar" else ("—" if same[0] == "—" else f"{sum(s == 'yes' for s in same)}/{len(same)}")
        summary.add_row(m, f"{sum(r['tpf'] for r in rs) / len(rs):.2f}",
                        f"{sum(len(r['tokens']) for r in rs) / wall:.1f}" if wall > 0 else "—",
                        f"{sum(r.get('mode_compile_time', 0.0) for r in rs):.1f}", ident)
    console.print(summary)
    console.print("TPF = generated tokens / forward passes (docs/ALGORITHMS.md, 'Counting NFE and TPF'). tokens/s is the decode alone; "
                  "compilation is timed apart (compile s).", style="dim")
