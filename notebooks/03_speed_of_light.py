# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # Speed of light: how fast could diffusion decode without changing its answer?
#
# NLD_SPEC 5.4: the paper reports a "speed-of-light" TPF of 7.6 at block 32, against about 3
# for confidence-threshold sampling. The oracle here (`nemodiff_jax.eval.oracle`) computes
# the same quantity for our models:
#
# * the **serial reference** commits one token per denoising forward (the most confident);
#   its output is the target;
# * the **oracle** searches, per block, for the schedule that commits as many tokens per
#   forward as possible while every committed token still equals the target (a set can be
#   committed together iff each one's prediction, under the current canvas, is its target).
#
# Exact search on small blocks, a beam search with a forward budget on large ones. The gap
# between the oracle and threshold sampling is the headroom a better sampler could claim.

# %%
import os
import sys

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt

from nemodiff_jax.eval.canvas import figure_size, plot_canvas
from nemodiff_jax.eval.codec import Codec
from nemodiff_jax.eval.datasets import synthetic
from nemodiff_jax.eval.models import embedded_or_random
from nemodiff_jax.eval.oracle import sol_oracle
from nemodiff_jax.eval.oracle_report import oracle_report
from nemodiff_jax.decode.generate import generate

SMALL = os.environ.get("NEMODIFF_NB_SMALL") == "1"
OUT = os.environ.get("NEMODIFF_NB_OUT")
model = embedded_or_random()
codec = Codec.for_model(model)
BLOCK = model.config.block_size  # 32 for the embedded model: beam search; 8 for the random one: exact
MAX_NEW = max(2 * BLOCK, 16 if SMALL else 64)

# %% [markdown]
# ## Oracle vs threshold sampling over a few prompts

# %%
examples = synthetic(1 if SMALL else 3, ["reverse", "sort"] if SMALL else None)
report = oracle_report(model, examples, block_length=BLOCK, max_new_tokens=MAX_NEW, thresholds=(0.7, 0.9),
                       progress=False)
print(report.table())
for k, v in report.summary.items():
    print(f"{k:>22s}: {v:.3f}" if isinstance(v, float) else f"{k:>22s}: {v}")

# %% [markdown]
# `serial_check` confirms that `generate(mode="diffusion", policy="quota")` reproduces the
# oracle's serial target. `threshold_same@t` is the fraction of prompts where threshold
# sampling happened to produce exactly the serial output.
#
# ## Three canvases of one prompt
# Serial (one token per pass), the oracle's schedule, and threshold 0.9.

# %%
ids = codec.encode(examples[0].prompt)
sol = sol_oracle(model, ids, block_length=BLOCK, max_new_tokens=MAX_NEW)
thr = generate(model, [ids], mode="diffusion", max_new_tokens=MAX_NEW, block_length=BLOCK, threshold=0.9, lora=False)
labels = [codec.decode([t]).strip() or "·" for t in sol.tokens]
fig, axes = plt.subplots(3, 1, figsize=figure_size(BLOCK, -(-len(sol.tokens) // BLOCK), 3), layout="constrained")
t_labels = [codec.decode([t]).strip() or "·" for t in thr.tokens[0]]
panels = [
    (sol.serial_commit_step, labels, f"serial: TPF {sol.serial_tpf:.2f}"),
    (sol.commit_step, labels, f"oracle: TPF {sol.oracle_tpf:.2f}"),
    (thr.stats["commit_pass"][0][: len(thr.tokens[0])], t_labels, f"threshold 0.9: TPF {thr.tpf[0]:.2f}"),
]
for ax, (steps, labs, title) in zip(axes, panels):
    fig.colorbar(plot_canvas(ax, steps, BLOCK, labs, title), ax=ax, label="pass")
if OUT:
    fig.savefig(os.path.join(OUT, "03_canvases.png"), dpi=100)
plt.show() if "ipykernel" in sys.modules else plt.close(fig)

# %% [markdown]
# Per block: forward passes of the serial reference vs the oracle, and whether the search
# was exhaustive (`exact`: proved optimal) or a beam search within its budget.

# %%
for i, b in enumerate(sol.blocks):
    print(f"block {i}: serial {b.serial_steps} -> oracle {b.steps} passes, exact={b.exact}, "
          f"{b.forwards} canvases evaluated, schedule={b.schedule}")
