"""Writing results: JSON (everything), CSV (one metrics row per line), JSONL samples, text tables."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

from ..guard import atomic_write_text


def _clean(x):
    """JSON-safe values: numpy scalars to Python, NaN/inf to None."""
    if hasattr(x, "item") and not isinstance(x, (list, dict, str)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def write_json(obj: Any, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(_clean(obj), indent=1, allow_nan=False) + "\n")


def write_csv(rows: Sequence[dict], path, columns: Sequence[str] | None = None) -> Path:
    """Rows as CSV; columns default to the union of keys in first-seen order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else _clean(r.get(k))) for k in columns})
    return atomic_write_text(path, buf.getvalue())


def write_jsonl(rows: Sequence[dict], path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, "".join(json.dumps(_clean(r), allow_nan=False) + "\n" for r in rows))


def write_eval(results, out_dir) -> dict[str, str]:
    """``results.json`` (config, metrics, compiles, samples), ``metrics.csv``, ``samples.jsonl``."""
    out = Path(out_dir)
    paths = {
        "json": write_json(
            dict(config=results.config, metrics=results.metrics, compiles=results.compiles, samples=results.samples),
            out / "results.json",
        ),
        "csv": write_csv(results.metrics, out / "metrics.csv"),
        "samples": write_jsonl(results.samples, out / "samples.jsonl"),
    }
    return {k: str(v) for k, v in paths.items()}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A plain fixed-width text table (what the CLIs print)."""
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which (accuracy, tpf) points no other point weakly beats on both with one strict win."""
    flags = []
    for i, (a, t) in enumerate(points):
        dominated = any(
            (a2 >= a and t2 >= t and (a2 > a or t2 > t)) for j, (a2, t2) in enumerate(points) if j != i
        )
        flags.append(not dominated)
    return flags
