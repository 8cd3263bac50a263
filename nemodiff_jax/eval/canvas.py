"""Pictures of a diffusion canvas: which token was committed by which forward pass.

Input is one row of ``stats["commit_pass"]`` (the 1-based NFE index of the forward that
produced each generated token; 0 = the seed from the uncounted prefill; -1 past the end),
or the oracle's ``commit_step``. The grid has one line per block, one cell per position;
the colour is the pass, the text the token. Tokens committed together share a colour.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def canvas_grid(commit_pass: Sequence[int], block_length: int) -> np.ndarray:
    """``[blocks, block_length]`` float array of pass indices, NaN where nothing was generated."""
    cp = np.asarray(commit_pass, float)
    n_blocks = max(-(-len(cp) // block_length), 1)
    grid = np.full(n_blocks * block_length, np.nan)
    grid[: len(cp)] = np.where(cp >= 0, cp, np.nan)
    return grid.reshape(n_blocks, block_length)


def figure_size(block_length: int, n_blocks: int, panels: int = 1) -> tuple[float, float]:
    """A figure size that keeps cells readable: panels stacked vertically."""
    return max(6.0, 0.4 * block_length), panels * (0.9 + 0.55 * n_blocks)


def plot_canvas(ax, commit_pass: Sequence[int], block_length: int, labels: Sequence[str] | None = None,
                title: str | None = None, max_blocks: int = 12):
    """Draw the canvas grid on a matplotlib axis; returns the image (for a colourbar)."""
    grid = canvas_grid(commit_pass, block_length)[:max_blocks]
    im = ax.imshow(grid, cmap="viridis", aspect="auto", interpolation="nearest")
    if labels is not None:
        size = 6 if block_length <= 16 else 5
        for i, text in enumerate(labels[: grid.size]):
            r, c = divmod(i, block_length)
            if r < grid.shape[0] and not np.isnan(grid[r, c]):
                ax.text(c, r, f"{text}\n{int(grid[r, c])}", ha="center", va="center", fontsize=size, color="white")
    ax.set_xlabel("position in block")
    ax.set_ylabel("block")
    ax.set_xticks(range(0, block_length, 1 if block_length <= 16 else 4))
    ax.set_yticks(range(grid.shape[0]))
    if title:
        ax.set_title(title, fontsize=9)
    return im
