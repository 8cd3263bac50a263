"""Data side: synthetic tasks, the bundled corpus, the tokenizer and batching (numpy only).

- `tasks`: verifiable task generators, train/test splits by prompt hash, exact-match scoring;
- `corpus`: the committed Shakespeare subset (`load_corpus`) and the script that built it;
- `tokenizer_train`: the 2048-token byte-level BPE (`load_tokenizer`) and its training script;
- `batches`: fixed-length int32 `ids` / `loss_mask` arrays and a mixed task+corpus iterator.

The corpus and tokenizer names load lazily, so `python -m nemodiff_jax.data.<module>` runs
those modules cleanly.
"""

import importlib

from nemodiff_jax.data.tasks import (
    DEFAULT_TASKS,
    EOS,
    TASKS,
    accuracy,
    build_task_dataset,
    exact_match,
)

_LAZY = {
    "load_corpus": "corpus",
    "load_tokenizer": "tokenizer_train",
    "PAD_ID": "tokenizer_train",
    "BOS_ID": "tokenizer_train",
    "EOS_ID": "tokenizer_train",
    "MASK_ID": "tokenizer_train",
}

__all__ = ["DEFAULT_TASKS", "EOS", "TASKS", "accuracy", "build_task_dataset", "exact_match",
           *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
