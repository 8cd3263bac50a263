"""Issue 15's diagnostics on the held-out split: diffusion accuracy by ``prompt_len % block``,
and infilling exact recovery through the plain forward.

    python -m nemodiff_jax.train.ablate_embedded [--model embedded] [--n 120] [--json FILE]

Diffusion: ``<bos> prompt`` ids, greedy, block 32, threshold 0.9, with and without the draft
LoRA (the settings of :mod:`.evaluate_embedded`); each prompt is binned by ``len(<bos> prompt) %
block``, the offset between inference blocks (which start at the prompt's end) and training
blocks counted from position 0 (what the training mask did before ``align_blocks``).

Infilling: for each held-out example a span of 4-8 answer tokens (span length and start drawn
from ``random.Random(seed)``; the span never holds the answer's first token or its ``<eos>``) is
replaced by ``<mask>``; the window is ``<bos> prompt answer[:s]`` + masks + up to 16 answer
tokens after the span, under a bidirectional mask. One mask is committed per forward (the most
confident position, greedy); a case counts iff every span token is recovered exactly.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict

import numpy as np


def infill_cases(tok, examples, seed: int = 0, suffix_max: int = 16):
    """``[(prefix_ids, span_ids, suffix_ids, task)]``, one per example (see the module docstring)."""
    from nemodiff_jax.data.batches import prompt_ids

    rng = random.Random(seed)
    out = []
    for prompt, answer, task in examples:
        pre = prompt_ids(tok, prompt)
        ans = tok.encode(answer, add_special_tokens=False).ids
        n = rng.randint(4, 8)
        start = rng.randint(1, len(ans) - 1 - n)  # answer head >= 1 token; eos stays in the suffix
        out.append((pre + ans[:start], ans[start:start + n], ans[start + n:start + n + suffix_max], task))
    return out


def infill(model, cases, *, lora: bool = False, batch: int = 40, attention: str = "bidirectional") -> list[bool]:
    """Exact recovery per case: one committed token per forward, by confidence.

    ``attention``: ``"bidirectional"`` (every window token sees every other) or ``"mixed"`` (the
    prefix causal, as a KV cache would hold it; the masks and the suffix see everything)."""
    import jax.numpy as jnp

    from nemodiff_jax.model import masks
    from nemodiff_jax.model.forward import forward

    cfg = model.config
    ok = []
    for i in range(0, len(cases), batch):
        chunk = cases[i:i + batch]
        rows = [p + [cfg.mask_token_id] * len(s) + x for p, s, x, _ in chunk]
        width = max(map(len, rows))
        ids = np.full((len(rows), width), cfg.pad_token_id, np.int32)
        for r, row in enumerate(rows):
            ids[r, :len(row)] = row
        lengths = jnp.asarray([len(r) for r in rows], jnp.int32)
        b = len(rows)
        zero = jnp.zeros((b,), jnp.int32)
        if attention == "mixed":
            policy = masks.mixed(zero, jnp.asarray([len(p) for p, _, _, _ in chunk], jnp.int32), lengths, b)
        else:
            policy = masks.bidirectional(zero, width, b, window_len=lengths)
        pos = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), (b, width))
        for _ in range(max(len(s) for _, s, _, _ in chunk)):
            logits, _ = forward(model.params, cfg, jnp.asarray(ids), pos, policy, None, jnp.float32(float(lora)))
            probs = np.asarray(jnp.max(jax_softmax(logits), axis=-1))
            pred = np.asarray(jnp.argmax(logits, axis=-1))
            is_mask = ids == cfg.mask_token_id
            conf = np.where(is_mask, probs, -1.0)
            for r in range(b):
                if is_mask[r].any():
                    j = int(np.argmax(conf[r]))
                    ids[r, j] = pred[r, j]
        for r, (p, s, _, _) in enumerate(chunk):
            ok.append(ids[r, len(p):len(p) + len(s)].tolist() == s)
    return ok


def jax_softmax(x):
    import jax

    return jax.nn.softmax(x, axis=-1)


def diffusion_by_offset(model, examples, *, lora: bool, block: int = 32, threshold: float = 0.9,
                        max_new_tokens: int = 64, batch: int = 40):
    """``(ok per example, prompt lengths, tpf)`` for greedy block diffusion."""
    from nemodiff_jax.data.batches import prompt_ids
    from nemodiff_jax.data.tokenizer_train import EOS_ID
    from nemodiff_jax.decode.generate import generate

    from .evaluate_embedded import _answers, _cut, _hf_tokenizer

    tok = _hf_tokenizer(model)
    prompts = [prompt_ids(tok, p) for p, _, _ in examples]
    refs = _answers(tok, examples)
    outs, nfe = [], 0
    for i in range(0, len(prompts), batch):
        r = generate(model, prompts[i:i + batch], mode="diffusion", max_new_tokens=max_new_tokens,
                     block_length=block, threshold=threshold, lora=lora)
        outs += [_cut(t, EOS_ID) for t in r.tokens]
        nfe += sum(r.nfe)
    ok = [o == ref for o, ref in zip(outs, refs)]
    return ok, [len(p) for p in prompts], sum(map(len, outs)) / max(nfe, 1)


BINS = ((0, 7), (8, 15), (16, 23), (24, 31))


def offset_table(rows: dict, block: int = 32) -> str:
    """Markdown: accuracy per ``prompt_len % block`` bin, one row per arm."""
    lines = ["| arm | TPF | all | " + " | ".join(f"% {block} in {lo}-{hi}" for lo, hi in BINS) + " |",
             "|---|---|---|" + "---|" * len(BINS)]
    for name, (ok, plen, tpf) in rows.items():
        cells = []
        for lo, hi in BINS:
            sel = [k for k, p in zip(ok, plen) if lo <= p % block <= hi]
            cells.append(f"{100 * np.mean(sel):.0f}% (n={len(sel)})" if sel else "-")
        lines.append(f"| {name} | {tpf:.2f} | {100 * np.mean(ok):.1f}% | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=40)
    ap.add_argument("--skip-diffusion", action="store_true")
    ap.add_argument("--infill-attention", default="bidirectional", choices=("bidirectional", "mixed"))
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    from nemodiff_jax import load
    from nemodiff_jax.data.tasks import build_task_dataset

    from .evaluate_embedded import _hf_tokenizer

    model = load(args.model, dtype="float32")
    examples = build_task_dataset("test", args.n, seed=args.seed)
    loras = (False, True) if model.has_lora else (False,)
    report = {}
    if not args.skip_diffusion:
        rows = {}
        for lora in loras:
            rows[f"diffusion{'+lora' if lora else ''}"] = diffusion_by_offset(model, examples, lora=lora,
                                                                             batch=args.batch)
        print(offset_table(rows))
        report["diffusion"] = {k: {"ok": v[0], "prompt_len": v[1], "tpf": v[2]} for k, v in rows.items()}
    cases = infill_cases(_hf_tokenizer(model), examples, seed=args.seed)
    for lora in loras:
        ok = infill(model, cases, lora=lora, batch=args.batch, attention=args.infill_attention)
        per = defaultdict(list)
        for k, c in zip(ok, cases):
            per[c[3]].append(k)
        name = f"infill{'+lora' if lora else ''} ({args.infill_attention})"
        print(f"{name}: {100 * np.mean(ok):.1f}% exact ({len(ok)} cases) | "
              + ", ".join(f"{t} {100 * np.mean(v):.0f}%" for t, v in sorted(per.items())))
        report[name] = {"accuracy": float(np.mean(ok)), "per_task": {t: float(np.mean(v)) for t, v in per.items()}}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
