# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # Sampler ablation: accuracy vs tokens per forward
#
# Block diffusion trades accuracy for speed through its unmasking policy: how many masked
# positions a denoising forward may commit. We sweep policy x threshold x temperature on the
# held-out synthetic tasks, tabulate accuracy against TPF, find the Pareto front and plot it.
#
# Threshold and temperature are traced values, so after the first compile of each
# (policy, block length) the other rows reuse the program: the `compiles` column shows it.
# The thresholds of a group run fused, as rows of one batched call.

# %%
import os
import sys
import tempfile

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt

from nemodiff_jax.eval.models import embedded_or_random
from nemodiff_jax.eval.sweep import SweepGrid, run_sweep

SMALL = os.environ.get("NEMODIFF_NB_SMALL") == "1"
OUT = os.environ.get("NEMODIFF_NB_OUT")
model = embedded_or_random()

# %%
grid = SweepGrid(
    policies=("threshold", "quota") if SMALL else ("threshold", "quota", "margin", "entropy", "eb"),
    thresholds=(0.3, 0.6, 0.9) if SMALL else (0.3, 0.5, 0.7, 0.8, 0.9, 0.95),
    block_lengths=(model.config.block_size,) if SMALL else (8, 16, 32),
    temperatures=(0.0,) if SMALL else (0.0, 0.7),
    gammas=(0.1, 1.0),
)
print(f"{grid.size()} configurations")
result = run_sweep(model, "synthetic", grid, n=1 if SMALL else 8, batch_size=2 if SMALL else 8,
                   max_new_tokens=max(2 * model.config.block_size, 32 if SMALL else 64), baselines=("ar",),
                   progress=False)
print(result.table())

# %% [markdown]
# ## The Pareto front
# Configurations that no other configuration beats on both accuracy and TPF.

# %%
for r in result.pareto():
    print(f"{r['policy']:>10s}  threshold={r['threshold']}  block={r['block_length']}  T={r['temperature']}"
          f"  acc={r['accuracy']:.3f}  TPF={r['tpf']:.2f}")

# %%
out_dir = OUT or tempfile.mkdtemp()
paths = result.write(out_dir)
img = plt.imread(paths["png"])
fig, ax = plt.subplots(figsize=(8, 5.2))
ax.imshow(img)
ax.axis("off")
plt.show() if "ipykernel" in sys.modules else plt.close(fig)
print("plot:", paths["png"], paths["svg"])
