"""Score a tri-mode model on the held-out task split: accuracy and TPF per decoding mode.

    python -m nemodiff_jax.train.evaluate_embedded [--model embedded] [--n 120]

Prompts are ``<bos> prompt`` from ``build_task_dataset("test", n)``; an answer is right iff the
generated ids, cut after the first ``<eos>``, equal the reference answer's ids (EOS included),
i.e. ``tasks.exact_match``. TPF = generated tokens / forward passes, summed over prompts, with
the NFE conventions of :mod:`nemodiff_jax.decode.generate`. Speculative rows also report whether
the output is identical to AR's and the mean acceptance length per cycle.

``infill`` (and ``infill+lora``) score :func:`nemodiff_jax.infill` on spans of 4-8 answer tokens cut
out of the same held-out answers (:mod:`nemodiff_jax.data.infill_cases`: prefix ``<bos>`` + prompt
+ the answer's head, suffix up to 16 answer tokens), one token committed per forward by
confidence; accuracy is exact recovery of the whole span, TPF span tokens per forward.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import numpy as np

DEFAULT_SETTINGS = {
    "ar": {},
    "diffusion": {"block_length": 32, "threshold": 0.9, "lora": False},
    "diffusion+lora": {"block_length": 32, "threshold": 0.9, "lora": True},
    "linear_spec": {"block_length": 32, "lora": False},
    "linear_spec+lora": {"block_length": 32, "lora": True},
    "quadratic_spec": {"block_length": 16},
    "infill": {"lora": False},
    "infill+lora": {"lora": True},
}


def _answers(tok, examples):
    return [tok.encode(a, add_special_tokens=False).ids for _, a, _ in examples]


def _cut(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def evaluate(model, examples, modes, max_new_tokens: int = 64, batch: int = 40, log=print,
             settings: dict | None = None) -> dict:
    """``{mode: {accuracy, tpf, nfe, tokens, identical_to_ar, mean_accept, per_task, seconds}}``.

    ``settings`` overrides DEFAULT_SETTINGS per mode, e.g. ``{"diffusion": {"threshold": 0.99}}``.
    """
    table = {**DEFAULT_SETTINGS, **(settings or {})}
    from nemodiff_jax.data.batches import prompt_ids
    from nemodiff_jax.data.tokenizer_train import EOS_ID
    from nemodiff_jax.decode.generate import generate

    tok = _hf_tokenizer(model)
    prompts = [prompt_ids(tok, p) for p, _, _ in examples]
    refs = _answers(tok, examples)
    names = [t for _, _, t in examples]
    results, ar_out = {}, None
    for mode in modes:
        if mode not in table:
            raise ValueError(f"unknown mode {mode!r}; known: {', '.join(table)}")
        kw = dict(table[mode])
        base_mode = mode.split("+")[0]
        if kw.get("lora") and not model.has_lora:
            continue
        if base_mode == "infill":
            results[mode] = _infill(model, tok, examples, batch=batch, **kw)
            log(f"{mode}: exact {results[mode]['accuracy']:.3f} over {results[mode]['tokens']} span tokens")
            continue
        outs, nfe, accept = [], [], []
        t0 = time.time()
        for i in range(0, len(prompts), batch):
            r = generate(model, prompts[i : i + batch], mode=base_mode, max_new_tokens=max_new_tokens, **kw)
            outs += [_cut(t, EOS_ID) for t in r.tokens]
            nfe += r.nfe
            if "acceptance_lengths" in r.stats:
                acc = np.asarray(r.stats["acceptance_lengths"])
                accept += acc[acc > 0].tolist()
        secs = time.time() - t0
        ok = [o == ref for o, ref in zip(outs, refs)]
        per_task = defaultdict(list)
        for n, k in zip(names, ok):
            per_task[n].append(k)
        gen = sum(len(o) for o in outs)
        res = {
            "accuracy": float(np.mean(ok)),
            "tpf": gen / max(sum(nfe), 1),
            "nfe": int(sum(nfe)),
            "tokens": int(gen),
            "per_task": {n: float(np.mean(v)) for n, v in sorted(per_task.items())},
            "seconds": secs,
            "settings": kw,
        }
        if mode == "ar":
            ar_out = outs
        elif ar_out is not None and "spec" in mode:
            res["identical_to_ar"] = float(np.mean([a == b for a, b in zip(outs, ar_out)]))
        if accept:
            res["mean_accept"] = float(np.mean(accept))
        results[mode] = res
        log(f"{mode}: acc {res['accuracy']:.3f} tpf {res['tpf']:.2f} ({secs:.0f}s)")
    return results


def _infill(model, tok, examples, *, batch: int, **kw) -> dict:
    from nemodiff_jax.data.infill_cases import infill_cases
    from nemodiff_jax.decode.infill import infill

    rows = infill_cases(tok, examples, model.config.bos_token_id)
    ok, nfe, per_task, t0 = [], 0, defaultdict(list), time.time()
    for i in range(0, len(rows), batch):
        chunk = rows[i:i + batch]
        r = infill(model, [c["prefix"] for c in chunk], [c["suffix"] for c in chunk],
                   length=[len(c["span"]) for c in chunk], **kw)
        nfe += int(sum(r.nfe))
        for c, t in zip(chunk, r.tokens):
            ok.append(t == c["span"])
            per_task[c["task"]].append(ok[-1])
    span_tokens = sum(len(c["span"]) for c in rows)
    return {"accuracy": float(np.mean(ok)), "tpf": span_tokens / max(nfe, 1), "nfe": nfe, "tokens": span_tokens,
            "per_task": {n: float(np.mean(v)) for n, v in sorted(per_task.items())}, "seconds": time.time() - t0,
            "settings": kw, "cases": len(rows)}


def _hf_tokenizer(model):
    from pathlib import Path

    from tokenizers import Tokenizer

    from nemodiff_jax.data.tokenizer_train import TOKENIZER_DIR

    d = Path(model.path) if model.path else TOKENIZER_DIR
    f = d / "tokenizer.json"
    return Tokenizer.from_file(str(f if f.is_file() else TOKENIZER_DIR / "tokenizer.json"))


def format_table(results: dict) -> str:
    lines = [
        "| mode | settings | accuracy | TPF | identical to AR | mean acceptance |",
        "|---|---|---|---|---|---|",
    ]
    for mode, r in results.items():
        s = ", ".join(f"{k}={v}" for k, v in r["settings"].items()) or "-"
        ident = f"{100 * r['identical_to_ar']:.1f}%" if "identical_to_ar" in r else "-"
        acc = f"{r['mean_accept']:.2f}" if "mean_accept" in r else "-"
        lines.append(f"| {mode} | {s} | {100 * r['accuracy']:.1f}% | {r['tpf']:.2f} | {ident} | {acc} |")
    tasks = sorted({t for r in results.values() for t in r["per_task"]})
    lines += ["", "| mode | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for mode, r in results.items():
        lines.append(f"| {mode} | " + " | ".join(f"{100 * r['per_task'][t]:.0f}%" for t in tasks) + " |")
    return "\n".join(lines)


def diffusion_grid(model, examples, blocks=(32, 16, 8), thresholds=(0.9, 0.99, 0.999), max_new_tokens=64,
                   batch=40) -> str:
    """Diffusion accuracy @ TPF over block length x draft LoRA x threshold, as a markdown table."""
    loras = (False, True) if model.has_lora else (False,)
    lines = ["| block | LoRA | " + " | ".join(f"threshold {t}" for t in thresholds) + " |",
             "|---|---|" + "---|" * len(thresholds)]
    for bl in blocks:
        for lora in loras:
            cells = []
            for t in thresholds:
                knobs = {"diffusion": {"block_length": bl, "threshold": t, "lora": lora}}
                r = evaluate(model, examples, ["diffusion"], max_new_tokens, batch, log=lambda *a: None,
                             settings=knobs)["diffusion"]
                cells.append(f"{100 * r['accuracy']:.1f}% @ {r['tpf']:.2f}")
            lines.append(f"| {bl} | {'on' if lora else 'off'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--n", type=int, default=120, help="held-out examples (round-robin over tasks)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modes", default="ar,diffusion,diffusion+lora,linear_spec,linear_spec+lora,quadratic_spec,infill,infill+lora")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=40)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--diffusion-grid", action="store_true",
                    help="instead: diffusion accuracy @ TPF over block 32/16/8 x LoRA off/on x threshold 0.9/0.99/0.999")
    args = ap.parse_args(argv)

    from nemodiff_jax import load
    from nemodiff_jax.data.tasks import build_task_dataset

    model = load(args.model, dtype="float32")
    examples = build_task_dataset("test", args.n, seed=args.seed)
    if args.diffusion_grid:
        print(diffusion_grid(model, examples, max_new_tokens=args.max_new_tokens, batch=args.batch))
        return 0
    results = evaluate(model, examples, args.modes.split(","), args.max_new_tokens, args.batch)
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
