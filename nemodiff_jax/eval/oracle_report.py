"""The speed-of-light oracle beside real samplers, over a set of prompts.

For each prompt: the serial reference and its SOL schedule (:mod:`.oracle`), and the
threshold sampler at each requested threshold run through ``generate`` (same block length,
same NFE accounting). ``serial_check`` says whether ``generate`` with the quota-1 policy
reproduces the oracle's serial target, a guard that the two code paths agree.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from ..decode.generate import generate
from . import scorers
from .codec import Codec
from .datasets import Example, load_tasks
from .oracle import sol_oracle
from .progress import progress_bar


@dataclasses.dataclass
class OracleReport:
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    summary: dict[str, Any]

    def table(self) -> str:
        from .report import format_table

        cols = ["index", "task", "tokens", "serial_tpf", "oracle_tpf", "exact", "forwards"]
        cols += [c for c in self.rows[0] if c.startswith("threshold_tpf")] if self.rows else []
        return format_table(self.rows, cols)

    def write(self, out_dir) -> dict[str, str]:
        from pathlib import Path

        from .report import write_csv, write_json

        out = Path(out_dir)
        return {
            "json": str(write_json(dict(config=self.config, summary=self.summary, rows=self.rows), out / "oracle.json")),
            "csv": str(write_csv(self.rows, out / "oracle.csv")),
        }


def oracle_report(
    model,
    tasks: Sequence[Example] | str | Sequence[str] = "synthetic",
    *,
    n: int = 2,
    block_length: int = 8,
    max_new_tokens: int = 64,
    thresholds: Sequence[float] = (0.9,),
    mode: str = "auto",
    beam: int | None = None,
    budget: int = 2048,
    lora: bool = False,
    progress: bool = True,
    out_dir=None,
) -> OracleReport:
    """SOL TPF vs threshold sampling TPF for each example (module docstring); ``lora``: the draft
    LoRA in every denoise pass of all three (off by default, as in the reference decoder)."""
    from .oracle import check_oracle_args

    check_oracle_args(block_length, thresholds, beam, budget)
    examples = list(tasks) if not isinstance(tasks, str) and tasks and isinstance(tasks[0], Example) else load_tasks(tasks, n=n)
    codec = Codec.for_model(model)
    mnt = max(max_new_tokens // block_length, 1) * block_length
    rows = []
    with progress_bar(len(examples), enabled=progress, description="oracle") as bar:
        for i, ex in enumerate(examples):
            ids = list(ex.prompt_ids) if ex.prompt_ids is not None else codec.encode(ex.prompt)
            r = sol_oracle(model, ids, block_length=block_length, max_new_tokens=mnt, mode=mode, beam=beam,
                           budget=budget, lora=lora)
            ref = generate(model, [ids], mode="diffusion", max_new_tokens=mnt, block_length=block_length,
                           policy="quota", lora=lora)
            row = dict(
                index=i, task=ex.task, tokens=r.num_tokens, serial_nfe=r.serial_nfe, oracle_nfe=r.oracle_nfe,
                serial_tpf=r.serial_tpf, oracle_tpf=r.oracle_tpf, exact=r.exact, forwards=r.forwards,
                serial_correct=bool(scorers.get(ex.scorer)(codec.decode(r.tokens), ex.answer)),
                serial_check=ref.tokens[0] == r.tokens,
            )
            for t in thresholds:
                g = generate(model, [ids], mode="diffusion", max_new_tokens=mnt, block_length=block_length, threshold=t,
                         lora=lora)
                row[f"threshold_tpf@{t:g}"] = g.tpf[0]
                row[f"threshold_nfe@{t:g}"] = g.nfe[0]
                row[f"threshold_tokens@{t:g}"] = len(g.tokens[0])
                row[f"threshold_same@{t:g}"] = g.tokens[0] == r.tokens
            rows.append(row)
            bar.advance(1)
    summary = summarize_oracle(rows, thresholds)
    config = dict(model=getattr(model, "path", None), block_length=block_length, max_new_tokens=mnt,
                  thresholds=list(thresholds), search=mode, beam=beam, budget=budget, lora=lora,
                  n_examples=len(examples))
    rep = OracleReport(config, rows, summary)
    if out_dir is not None:
        rep.write(out_dir)
    return rep


def summarize_oracle(rows: list[dict], thresholds: Sequence[float]) -> dict[str, Any]:
    """TPF as total tokens / total NFE over prompts, for serial, SOL and each threshold."""
    tok = sum(r["tokens"] for r in rows)
    out = dict(
        n=len(rows),
        serial_tpf=tok / max(sum(r["serial_nfe"] for r in rows), 1),
        oracle_tpf=tok / max(sum(r["oracle_nfe"] for r in rows), 1),
        exact_fraction=sum(r["exact"] for r in rows) / max(len(rows), 1),
        serial_check=all(r["serial_check"] for r in rows),
        serial_accuracy=sum(r["serial_correct"] for r in rows) / max(len(rows), 1),
    )
    for t in thresholds:
        t_tok = sum(r[f"threshold_tokens@{t:g}"] for r in rows)
        t_nfe = sum(r[f"threshold_nfe@{t:g}"] for r in rows)
        out[f"threshold_tpf@{t:g}"] = t_tok / max(t_nfe, 1)
        out[f"threshold_same@{t:g}"] = sum(r[f"threshold_same@{t:g}"] for r in rows) / max(len(rows), 1)
        out[f"headroom@{t:g}"] = out["oracle_tpf"] / max(out[f"threshold_tpf@{t:g}"], 1e-9)
    return out
