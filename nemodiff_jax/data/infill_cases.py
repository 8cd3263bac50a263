"""Infilling cases cut out of task examples: the held-out infill benchmark's rows (numpy only).

Per example, a span of ``lo..hi`` answer tokens is cut out at a random place with at least one
answer token before it and one after it (the answer's ``<eos>`` can be that one); the prefix is
``<bos>`` + prompt + the answer's head, the suffix up to ``suffix`` answer tokens after the
span. Examples whose answer is too short for the drawn span are skipped. Shared by
``nemodiff_jax.eval.infill_recovery`` and ``nemodiff_jax.train.evaluate_embedded``.
"""

from __future__ import annotations

import numpy as np


def infill_cases(tok, examples, bos: int, *, seed: int = 0, lo: int = 4, hi: int = 8,
                 suffix: int = 16) -> list[dict]:
    """``[{index, task, prefix, span, suffix}]`` (token id lists), deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    out = []
    for i, (prompt, answer, task) in enumerate(examples):
        a = tok.encode(answer, add_special_tokens=False).ids
        p = tok.encode(prompt, add_special_tokens=False).ids
        k = int(rng.integers(lo, hi + 1))
        if len(a) < k + 2:
            continue
        head = int(rng.integers(1, len(a) - k))  # >= 1 answer token before, >= 1 after
        out.append(dict(index=i, task=task, prefix=[bos, *p, *a[:head]], span=a[head:head + k],
                        suffix=a[head + k:head + k + suffix]))
    return out
