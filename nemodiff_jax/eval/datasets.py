"""Evaluation sets: the synthetic task suite's held-out split, and user JSONL files.

An :class:`Example` is a prompt, its reference answer, the scorer that judges it, and the
task it belongs to (metrics are reported per task). A task spec is a string:

* ``synthetic`` or ``synthetic:reverse,sort``: ``n`` examples per task from the test split of
  :mod:`nemodiff_jax.data.tasks` (exact match, the answer ends with ``<eos>``);
* a path to a ``.jsonl`` file: one object per line with ``prompt`` and ``answer`` (strings),
  optional ``scorer`` (``exact`` | ``last_number`` | ``boxed``, default ``exact``), optional
  ``task`` (default: the file's stem), optional ``prompt_ids`` (a token-id list used instead
  of tokenizing ``prompt``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterable, Sequence

from . import scorers


@dataclasses.dataclass(frozen=True)
class Example:
    prompt: str
    answer: str
    task: str
    scorer: str = "exact"
    prompt_ids: tuple[int, ...] | None = None


def synthetic(n: int = 8, tasks: Sequence[str] | None = None, seed: int = 0, split: str = "test") -> list[Example]:
    """``n`` held-out examples of each synthetic task (all default tasks when ``tasks`` is None)."""
    from ..data import tasks as T

    names = tuple(T.DEFAULT_TASKS if tasks is None else tasks)
    rows = T.build_task_dataset(split, n * len(names), seed=seed, tasks=names)
    return [Example(p, a, name, "exact") for p, a, name in rows]


def read_jsonl(path: str | Path, limit: int | None = None) -> list[Example]:
    """Examples from a JSONL file (see the module docstring); errors name the line."""
    path = Path(path)
    out: list[Example] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not JSON ({e.msg})") from None
            if not isinstance(row, dict) or "answer" not in row or ("prompt" not in row and "prompt_ids" not in row):
                raise ValueError(f"{path}:{lineno}: needs the fields 'prompt' (or 'prompt_ids') and 'answer'")
            scorer = row.get("scorer", "exact")
            scorers.get(scorer)
            ids = row.get("prompt_ids")
            out.append(
                Example(
                    str(row.get("prompt", "")),
                    str(row["answer"]),
                    str(row.get("task", path.stem)),
                    scorer,
                    tuple(int(t) for t in ids) if ids is not None else None,
                )
            )
            if limit is not None and len(out) >= limit:
                break
    if not out:
        raise ValueError(f"{path} holds no examples")
    return out


def write_jsonl(examples: Iterable[Example], path: str | Path) -> Path:
    """Write examples in the JSONL format :func:`read_jsonl` reads."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as f:
        for ex in examples:
            row = {"prompt": ex.prompt, "answer": ex.answer, "scorer": ex.scorer, "task": ex.task}
            if ex.prompt_ids is not None:
                row["prompt_ids"] = list(ex.prompt_ids)
            f.write(json.dumps(row) + "\n")
    return path


def load_tasks(specs: str | Sequence[str], n: int = 8, seed: int = 0) -> list[Example]:
    """Examples for a comma-free list of specs, or one spec string (see the module docstring).

    ``n`` is examples per synthetic task, or the cap per JSONL file (``n <= 0``: all lines).
    """
    if isinstance(specs, str):
        specs = [specs]
    out: list[Example] = []
    for spec in specs:
        if spec == "synthetic" or spec.startswith("synthetic:"):
            names = [t for t in spec.partition(":")[2].split(",") if t] or None
            out.extend(synthetic(n, names, seed))
        elif spec.endswith(".jsonl") or Path(spec).is_file():
            out.extend(read_jsonl(spec, None if n <= 0 else n))
        else:
            from ..data import tasks as T

            if spec in T.TASKS:
                out.extend(synthetic(n, [spec], seed))
            else:
                raise ValueError(f"unknown task spec {spec!r}: use 'synthetic[:names]', a task name or a .jsonl path")
    return out
