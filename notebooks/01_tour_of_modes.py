# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # A tour of the four decoding modes
#
# One checkpoint, four ways to decode (docs/ALGORITHMS.md, "AR decoding" to "Quadratic self-speculation"): autoregressive (`ar`), block
# diffusion (`diffusion`), linear self-speculation (`linear_spec`) and quadratic
# self-speculation (`quadratic_spec`). We run each on the same prompts from the held-out
# synthetic tasks and compare outputs, forward passes (NFE) and tokens per forward (TPF).
# Then we draw the diffusion canvas: which token each forward pass committed.
#
# The embedded trained model is used when present; otherwise a tiny random model stands in
# (its outputs are noise, but every number and picture below is still produced).

# %%
import os
import sys

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from nemodiff_jax.eval.canvas import figure_size, plot_canvas
from nemodiff_jax.eval.codec import Codec
from nemodiff_jax.eval.datasets import synthetic
from nemodiff_jax.eval.models import embedded_or_random
from nemodiff_jax.decode.generate import MODES, generate

SMALL = os.environ.get("NEMODIFF_NB_SMALL") == "1"  # CI: fewer tokens
OUT = os.environ.get("NEMODIFF_NB_OUT")


def show(fig, name):
    """Inline in Jupyter; saved under $NEMODIFF_NB_OUT when run as a script."""
    if OUT:
        fig.savefig(os.path.join(OUT, f"{name}.png"), dpi=100)
    plt.show() if "ipykernel" in sys.modules else plt.close(fig)


model = embedded_or_random()
codec = Codec.for_model(model)
print(model.config)

# %% [markdown]
# ## Prompts
# Two held-out examples (`<bos>` + prompt, as the model was trained).

# %%
examples = synthetic(1, ["reverse", "sort"])
prompts = [codec.encode(ex.prompt) for ex in examples]
for ex in examples:
    print(repr(ex.prompt), "->", repr(ex.answer))
BLOCK = model.config.block_size  # the block length the model was trained with
MAX_NEW = max(2 * BLOCK, 32 if SMALL else 64)

# %% [markdown]
# ## Every mode on the same prompts
# NFE is counted per mode as in docs/ALGORITHMS.md, "Counting NFE and TPF" (see `nemodiff_jax.decode.generate`).

# %%
results = {}
for mode in MODES:
    kw = dict(block_length=BLOCK) if mode != "ar" else {}
    if mode == "diffusion":
        kw.update(threshold=0.9, lora=False)  # the draft LoRA belongs to linear speculation
    results[mode] = generate(model, prompts, mode=mode, max_new_tokens=MAX_NEW, **kw)

print(f"{'mode':16s} {'row':>3s} {'NFE':>4s} {'TPF':>5s}  output")
for mode, res in results.items():
    for r in range(len(prompts)):
        text = codec.decode(res.tokens[r])
        print(f"{mode:16s} {r:3d} {res.nfe[r]:4d} {res.tpf[r]:5.2f}  {text[:60]!r}")

# %% [markdown]
# Linear speculation at temperature 0 is lossless: its output equals AR decoding
# (up to floating-point near-ties, docs/ALGORITHMS.md, "Linear self-speculation").

# %%
same = [a == b for a, b in zip(results["ar"].tokens, results["linear_spec"].tokens)]
print("linear_spec == ar per row:", same)
for mode in ("linear_spec", "quadratic_spec"):
    acc = results[mode].stats["acceptance_lengths"]
    print(mode, "mean acceptance length per cycle:", float(acc[acc > 0].mean()))

# %% [markdown]
# ## The diffusion canvas
# `stats["commit_pass"]` holds, for each generated token, the forward pass that committed
# it. Each line of the grid is a block; cells that share a colour were committed together.

# %%
res = results["diffusion"]
n_blocks = max(-(-len(t) // BLOCK) for t in res.tokens)
fig, axes = plt.subplots(len(prompts), 1, figsize=figure_size(BLOCK, n_blocks, len(prompts)), squeeze=False,
                         layout="constrained")
for r, ax in enumerate(axes[:, 0]):
    labels = [codec.decode([t]).strip() or "·" for t in res.tokens[r]]
    im = plot_canvas(ax, res.stats["commit_pass"][r][: len(res.tokens[r])], BLOCK, labels,
                     title=f"row {r}: {len(res.tokens[r])} tokens in {res.nfe[r]} passes")
    fig.colorbar(im, ax=ax, label="forward pass")
show(fig, "01_canvas")

# %% [markdown]
# Tokens committed per forward pass (index 0 is the prefill's seed token).

# %%
hist = res.stats["tokens_per_pass"][0]
last = int(np.max(np.nonzero(hist))) + 1
fig, ax = plt.subplots(figsize=(6, 2.2))
ax.bar(range(last), hist[:last])
ax.set_xlabel("forward pass")
ax.set_ylabel("tokens committed")
show(fig, "01_tokens_per_pass")

# %% [markdown]
# ## Infilling: fill the middle
# What an AR model cannot do in one pass: masks between a prefix and a suffix
# (docs/ALGORITHMS.md, "Infilling and revision"). We cut a span out of the first
# example's answer, keep the answer head in the prefix and the rest as the suffix, and let
# `nd.infill` fill it one token per step. The picture is the window `[span, suffix]`:
# the colour of a filled cell is the pass that committed it (0 = given suffix token).

# %%
import nemodiff_jax as nd

answer = codec.tok.encode(examples[0].answer, add_special_tokens=False).ids
head, span = 1, min(4, max(len(answer) - 2, 1))
fill = nd.infill(model, [prompts[0] + answer[:head]], [answer[head + span:]], length=span)
print("cut:   ", codec.decode(answer[head:head + span]))
print("filled:", codec.decode(fill.tokens[0]), "| exact:", fill.tokens[0] == answer[head:head + span],
      f"| {fill.nfe[0]} passes, decode {fill.wall_time * 1e3:.0f} ms, compile {fill.compile_time:.1f} s")
window = fill.tokens[0] + answer[head + span:]
passes = fill.commit_pass[0] + [0] * (len(window) - span)
fig, ax = plt.subplots(figsize=figure_size(len(window), 1))
im = plot_canvas(ax, passes, len(window), [codec.decode([t]).strip() or "·" for t in window],
                 title=f"infilled span ({span} masks) + suffix")
fig.colorbar(im, ax=ax, label="forward pass")
show(fig, "01_infill")
