"""Accuracy-vs-TPF plot of a sweep (matplotlib, Agg backend, PNG and SVG).

Colour = unmasking policy, marker = block length, hollow = LoRA on; the Pareto front is a
step line; baselines (AR, speculation) are black labelled crosses; speed-of-light oracle
points are stars at the serial reference's accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")


def plot_sweep(rows: Sequence[dict], out_stem, title: str | None = None, y: str = "auto") -> dict[str, str]:
    """Write ``<out_stem>.png`` and ``<out_stem>.svg``; return their paths.

    ``y``: ``accuracy``, ``similarity`` (partial credit), or ``auto`` = accuracy unless every row
    scores 0 (a model too small to solve the tasks), then similarity, said on the axis. The
    dashed front is the Pareto front of the plotted metric against TPF.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from .report import pareto_front

    if y == "auto":
        y = "accuracy" if any(r["accuracy"] for r in rows) or not all(r.get("similarity") is not None for r in rows) \
            else "similarity"
    if y not in ("accuracy", "similarity"):
        raise ValueError(f"y must be accuracy, similarity or auto, got {y!r}")
    out_stem = Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    samplers = [r for r in rows if r["kind"] == "sampler"]
    policies = list(dict.fromkeys(r["policy"] for r in samplers))
    blocks = sorted({r["block_length"] for r in rows if r["kind"] != "baseline" and r["block_length"]})
    cmap = plt.get_cmap("tab10")
    colour = {p: cmap(i % 10) for i, p in enumerate(policies)}
    marker = {b: MARKERS[i % len(MARKERS)] for i, b in enumerate(blocks)}

    fig, ax = plt.subplots(figsize=(7.0, 4.6), dpi=120)
    for r in samplers:
        c = colour[r["policy"]]
        ax.scatter(r["tpf"], r[y], s=46, marker=marker[r["block_length"]],
                   facecolors="none" if r["lora"] else c, edgecolors=c, linewidths=1.4, zorder=3)
        knob = r["threshold"] if r["threshold"] is not None else r["gamma"]
        label = f"{knob:g}" if knob is not None else ""
        if r["temperature"]:
            label += f" T{r['temperature']:g}"
        if label:
            ax.annotate(label, (r["tpf"], r[y]), textcoords="offset points", xytext=(4, 3), fontsize=7,
                        color="0.3")
    ranked = [r for r in rows if r["kind"] != "oracle"]
    flags = pareto_front([(r[y], r["tpf"]) for r in ranked])
    front = sorted((r["tpf"], r[y]) for r, f in zip(ranked, flags) if f)
    if front:
        xs, ys = zip(*front)
        ax.step(xs, ys, where="post", color="0.4", lw=1, ls="--", zorder=2, label="Pareto front")
    for r in rows:
        if r["kind"] == "baseline":
            ax.scatter(r["tpf"], r[y], marker="x", s=60, color="black", zorder=4)
            ax.annotate(r["mode"], (r["tpf"], r[y]), textcoords="offset points", xytext=(4, -10), fontsize=8)
        elif r["kind"] == "oracle":
            ax.scatter(r["tpf"], r[y], marker="*", s=160, color="gold", edgecolors="black", zorder=5)
            ax.annotate(f"SOL (block {r['block_length']})", (r["tpf"], r[y]), textcoords="offset points",
                        xytext=(6, 4), fontsize=8)
    # Legends: policy colours and block-length markers.
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", ls="", color=colour[p], label=p) for p in policies]
    handles += [Line2D([], [], marker=marker[b], ls="", color="0.3", mfc="none", label=f"block {b}") for b in blocks]
    if any(r.get("lora") for r in samplers):
        handles.append(Line2D([], [], marker="o", ls="", color="0.3", mfc="none", label="hollow: LoRA on"))
    if front:
        handles.append(Line2D([], [], color="0.4", ls="--", label="Pareto front"))
    ax.legend(handles=handles, fontsize=7, loc="best", frameon=False)
    accs = [r[y] for r in rows]
    lo, hi = min(accs), max(accs)
    pad = max(0.05, 0.08 * (hi - lo))
    ax.set_ylim(max(-0.02, lo - pad), min(1.02, hi + pad))
    ax.margins(x=0.12)  # room for the labels right of the last points
    ax.set_xlabel("tokens per forward (TPF)")
    ax.set_ylabel("accuracy (exact match)" if y == "accuracy" else "answer similarity (partial credit; accuracy is 0)")
    ax.set_title(title or f"Block diffusion sampler sweep: {y} vs TPF", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths = {}
    for ext in ("png", "svg"):
        path = out_stem.with_suffix(f".{ext}")
        fig.savefig(path, metadata={"Date": None} if ext == "svg" else None)
        paths[ext] = str(path)
    plt.close(fig)
    return paths


def plot_eval(metrics: Sequence[dict], out_stem, title: str | None = None, y: str = "auto") -> dict[str, str]:
    """Accuracy vs TPF of ``nemodiff eval`` metrics rows (ours or read from lm-eval output by
    :func:`~nemodiff_jax.eval.harness.read_harness`): one labelled point per mode, drawn by
    :func:`plot_sweep` as baselines. Rows of task ``all`` are used when there are any; rows
    without a TPF (a run without our telemetry) are left out."""
    rows = [r for r in metrics if r.get("task") == "all"] or list(metrics)
    points = [dict(kind="baseline", mode=_short(r["mode"]) if r.get("task") in (None, "all")
                   else f"{_short(r['mode'])} {r['task']}",
                   tpf=r["tpf"], accuracy=r["accuracy"], similarity=r.get("similarity"), block_length=None)
              for r in rows if r.get("tpf") is not None and r.get("accuracy") is not None]
    for i, p in enumerate(points):  # near points share one label ("a | b") instead of overprinting
        first = next((q for q in points[:i] if q["mode"] and abs(q["tpf"] - p["tpf"]) < 0.4
                      and abs(q["accuracy"] - p["accuracy"]) < 0.04), None)
        if first is not None:
            first["mode"], p["mode"] = f"{first['mode']} | {p['mode']}", ""
    if not points:
        raise ValueError("nothing to plot: no metrics row has both accuracy and tpf (lm-eval runs need our telemetry)")
    return plot_sweep(points, out_stem, title=title or "accuracy vs tokens per forward", y=y)


def _short(label: str) -> str:
    """``linear_spec;block_length=32;threshold=0.9`` -> ``linear_spec B32 t0.9`` (plot labels)."""
    for long, short in ((";block_length=", " B"), (";threshold=", " t"), (":threshold=", " t"),
                        (":block_length=", " B"), (";lora=True", " +LoRA"), (";", " ")):
        label = label.replace(long, short)
    return label
