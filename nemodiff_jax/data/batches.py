"""Fixed-length int32 training arrays from task examples and corpus text (numpy only).

Row layout for a task example (SFT, docs/ALGORITHMS.md, "Training objective"): `<bos> prompt answer... <eos> <pad>...`;
`loss_mask` is 1 exactly on the answer tokens including `<eos>`, so prompts are never
noised nor scored. Corpus windows are raw token runs with `loss_mask` all ones. AR losses
use loss_mask[:, 1:] as the mask of next-token targets; diffusion masks where loss_mask is 1.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import numpy as np
from tokenizers import Tokenizer

from nemodiff_jax.data import corpus as corpus_lib
from nemodiff_jax.data import tasks as tasks_lib
from nemodiff_jax.data.tokenizer_train import BOS_ID, EOS_ID, PAD_ID

Example = tuple[str, str, str]  # (prompt, answer, task_name)
TaskList = Sequence[str | tasks_lib.Task] | None


def prompt_ids(tok: Tokenizer, prompt: str) -> list[int]:
    """`<bos>` + prompt tokens: what a decoder is fed before generating the answer."""
    return [BOS_ID, *tok.encode(prompt, add_special_tokens=False).ids]


def encode_examples(
    tok: Tokenizer, examples: Sequence[Example], seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Task examples -> (ids [N, L], loss_mask [N, L]), both int32, right-padded with <pad>.

    Prompt and answer are encoded separately (the answer starts with a space, so this equals
    encoding their concatenation). Raises if an example does not fit in `seq_len`.
    """
    n = len(examples)
    prompts = tok.encode_batch([p for p, _, _ in examples], add_special_tokens=False)
    answers = tok.encode_batch([a for _, a, _ in examples], add_special_tokens=False)
    ids = np.full((n, seq_len), PAD_ID, np.int32)
    loss_mask = np.zeros((n, seq_len), np.int32)
    for i, (p, a) in enumerate(zip(prompts, answers)):
        if not a.ids or a.ids[-1] != EOS_ID:
            raise ValueError(f"answer of example {i} does not end with <eos>: {examples[i][1]!r}")
        start, end = 1 + len(p.ids), 1 + len(p.ids) + len(a.ids)
        if end > seq_len:
            raise ValueError(f"example {i} needs {end} tokens > seq_len {seq_len}")
        ids[i, 0] = BOS_ID
        ids[i, 1:start] = p.ids
        ids[i, start:end] = a.ids
        loss_mask[i, start:end] = 1
    return ids, loss_mask


def tokenize_corpus(tok: Tokenizer, text: str) -> np.ndarray:
    """Whole corpus -> one int32 token stream, each play followed by <eos>."""
    docs = tok.encode_batch(corpus_lib.split_documents(text), add_special_tokens=False)
    return np.asarray([t for d in docs for t in (*d.ids, EOS_ID)], np.int32)


def corpus_windows(
    stream: np.ndarray, seq_len: int, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`n` random windows of the token stream -> (ids [n, L], loss_mask [n, L] all ones)."""
    starts = rng.integers(0, len(stream) - seq_len + 1, size=n)
    ids = stream[starts[:, None] + np.arange(seq_len)].astype(np.int32)
    return ids, np.ones_like(ids)


def task_rows(
    tok: Tokenizer, seq_len: int, seed: int, tasks: TaskList = None, chunk: int = 4096
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless (ids [L], loss_mask [L]) rows of fresh train-split examples, shuffled per chunk."""
    rng = np.random.default_rng(seed)
    for k in itertools.count():
        examples = tasks_lib.build_task_dataset("train", chunk, seed=seed * 1_000_003 + k,
                                                tasks=tasks)
        ids, mask = encode_examples(tok, examples, seq_len)
        for i in rng.permutation(chunk):
            yield ids[i], mask[i]


def mixed_batches(
    tok: Tokenizer,
    batch_size: int,
    seq_len: int,
    task_fraction: float = 0.8,
    seed: int = 0,
    tasks: TaskList = None,
    corpus_text: str | None = None,
    chunk: int = 4096,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless batches {"ids", "loss_mask" [B, L] int32, "is_task" [B] bool}.

    Every batch holds round(task_fraction * B) task rows (first) and corpus windows for the
    rest, so the mix does not fluctuate between steps. Deterministic given `seed` (and
    `chunk`, the number of fresh task examples generated and shuffled at a time).
    """
    n_task = int(round(task_fraction * batch_size))
    rows = task_rows(tok, seq_len, seed, tasks, chunk) if n_task else None
    stream = None
    if n_task < batch_size:
        text = corpus_lib.load_corpus() if corpus_text is None else corpus_text
        stream = tokenize_corpus(tok, text)
    rng = np.random.default_rng([seed, 1])
    is_task = np.arange(batch_size) < n_task
    while True:
        parts = []
        if rows is not None:
            picked = [next(rows) for _ in range(n_task)]
            parts.append((np.stack([r[0] for r in picked]), np.stack([r[1] for r in picked])))
        if stream is not None:
            parts.append(corpus_windows(stream, seq_len, batch_size - n_task, rng))
        ids, loss_mask = (np.concatenate(x) for x in zip(*parts))
        yield {"ids": ids, "loss_mask": loss_mask, "is_task": is_task.copy()}
