"""Training batches as a pure function of (seed, step), so the data "iterator" resumes exactly.

The resumable data state is just the step index: batch ``k`` is rebuilt from scratch from
``(seed, k)`` whatever happened before, so a run stopped after step k and restarted reads
the very batches an uninterrupted run would have read. Sources:

* ``tasks``: SFT rows from :mod:`nemodiff_jax.data` (train split only) mixed with
  Shakespeare windows (``task_fraction`` of each batch is task rows);
* ``random``: uniform random ids with random prompt/answer loss masks (tests, smoke runs).
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class DataConfig:
    kind: str = "tasks"  # "tasks" | "random"
    task_fraction: float = 1.0
    tasks: tuple[str, ...] | None = None
    short_fraction: float = 0.0  # share of task rows drawn from tasks.short_variant (training aid)
    vocab_size: int = 2048  # random data only
    first_id: int = 8  # random data only: skip special ids


class BatchSource:
    """``batch(step) -> {"ids", "loss_mask"}`` int32 ``[B, L]`` numpy arrays."""

    def __init__(self, data: DataConfig, batch_size: int, seq_len: int, seed: int, tokenizer=None):
        if batch_size < 1 or seq_len < 2:
            raise ValueError(f"batch_size must be >= 1 and seq_len >= 2, got {batch_size} and {seq_len}")
        self.data, self.batch_size, self.seq_len, self.seed = data, batch_size, seq_len, seed
        self._tok = tokenizer
        if data.kind not in ("tasks", "random"):
            raise ValueError(f"data.kind must be 'tasks' or 'random', got {data.kind!r}")
        for name in ("task_fraction", "short_fraction"):
            if not 0.0 <= getattr(data, name) <= 1.0:
                raise ValueError(f"data.{name} must be in [0, 1], got {getattr(data, name)}")

    @cached_property
    def tokenizer(self):
        if self._tok is None:
            from tokenizers import Tokenizer

            from nemodiff_jax.data.tokenizer_train import TOKENIZER_DIR

            self._tok = Tokenizer.from_file(str(TOKENIZER_DIR / "tokenizer.json"))
        return self._tok

    @cached_property
    def _stream(self) -> np.ndarray:
        from nemodiff_jax.data.batches import tokenize_corpus
        from nemodiff_jax.data.corpus import load_corpus

        return tokenize_corpus(self.tokenizer, load_corpus())

    def batch(self, step: int) -> dict[str, np.ndarray]:
        if self.data.kind == "random":
            return random_batch(self.batch_size, self.seq_len, self.data.vocab_size, self.seed, step, self.data.first_id)
        return self._task_batch(step)

    def _task_batch(self, step: int) -> dict[str, np.ndarray]:
        from nemodiff_jax.data import tasks as tasks_lib
        from nemodiff_jax.data.batches import corpus_windows, encode_examples

        n_task = int(round(self.data.task_fraction * self.batch_size))
        n_short = int(round(self.data.short_fraction * n_task))
        parts = []
        if n_task:
            # A fresh, distinct seed per step: build_task_dataset seeds each task's rng from it.
            seed = self.seed * 1_000_003 + step
            names = self.data.tasks or tasks_lib.DEFAULT_TASKS
            examples = tasks_lib.build_task_dataset("train", n_task - n_short, seed=seed, tasks=names)
            if n_short:
                short = [tasks_lib.short_variant(t) for t in names]
                examples += tasks_lib.build_task_dataset("train", n_short, seed=-1 - seed, tasks=short)
            order = np.random.default_rng([self.seed, step, 0]).permutation(n_task)
            ids, mask = encode_examples(self.tokenizer, [examples[i] for i in order], self.seq_len)
            parts.append((ids, mask))
        if n_task < self.batch_size:
            rng = np.random.default_rng([self.seed, step, 1])
            parts.append(corpus_windows(self._stream, self.seq_len, self.batch_size - n_task, rng))
        ids, mask = (np.concatenate(x) for x in zip(*parts))
        return {"ids": ids.astype(np.int32), "loss_mask": mask.astype(np.int32)}


def random_batch(
    batch_size: int, seq_len: int, vocab_size: int, seed: int, step: int, first_id: int = 8
) -> dict[str, np.ndarray]:
    """Random ids; each row's first 1..L/2 tokens are a "prompt" (loss_mask 0)."""
    rng = np.random.default_rng([seed, step, 2])
    ids = rng.integers(first_id, vocab_size, size=(batch_size, seq_len), dtype=np.int32)
    prompt_len = rng.integers(1, max(2, seq_len // 2), size=(batch_size, 1))
    mask = (np.arange(seq_len)[None, :] >= prompt_len).astype(np.int32)
    return {"ids": ids, "loss_mask": mask}


def prefetch(source: BatchSource, steps: Sequence[int], depth: int = 2):
    """Yield ``(step, batch)`` built in a background thread, ``depth`` batches ahead."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)

    def work():
        try:
            for s in steps:
                q.put((s, source.batch(s)))
        except BaseException as e:  # hand the error to the consumer instead of leaving it waiting
            q.put(e)
            return
        q.put(None)

    threading.Thread(target=work, daemon=True).start()
    while (item := q.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        yield item
