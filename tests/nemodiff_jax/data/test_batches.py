"""Batching: shapes, dtypes, loss masks on answers only, corpus windows, the mixed iterator.

Also checks the committed corpus asset.
"""

from __future__ import annotations

import numpy as np
import pytest

from nemodiff_jax.data import batches as B
from nemodiff_jax.data import corpus
from nemodiff_jax.data import tasks as T
from nemodiff_jax.data import tokenizer_train as tt

SMALL_CORPUS = ("When shall we three meet again?\nIn thunder, lightning, or in rain?\n" * 40
                + "\n\n\n" + "Is this a dagger which I see before me?\n" * 40)


@pytest.fixture(scope="module")
def tok():
    return tt.load_tokenizer()


def test_encode_examples_layout(tok):
    examples = T.build_task_dataset("train", 64, seed=0, tasks=list(T.TASKS))
    ids, mask = B.encode_examples(tok, examples, 96)
    assert ids.shape == mask.shape == (64, 96) and ids.dtype == mask.dtype == np.int32
    assert (ids[:, 0] == tt.BOS_ID).all()
    for row, m, (prompt, answer, _) in zip(ids, mask, examples):
        pos = np.flatnonzero(m)
        assert (np.diff(pos) == 1).all()  # one contiguous answer span
        assert tok.decode(row[pos].tolist(), skip_special_tokens=False) == answer
        assert row[pos[-1]] == tt.EOS_ID
        assert tok.decode(row[1 : pos[0]].tolist()) == prompt
        assert (row[pos[-1] + 1 :] == tt.PAD_ID).all()
        assert B.prompt_ids(tok, prompt) == row[: pos[0]].tolist()
    assert not (ids[mask == 0] == tt.EOS_ID).any()  # eos only ever inside the loss mask


def test_encode_examples_too_long_raises(tok):
    with pytest.raises(ValueError):
        B.encode_examples(tok, T.build_task_dataset("train", 4, seed=0), 24)


def test_corpus_windows(tok):
    stream = B.tokenize_corpus(tok, SMALL_CORPUS)
    assert stream.dtype == np.int32 and stream[-1] == tt.EOS_ID
    assert (stream == tt.EOS_ID).sum() == 2  # one per document
    ids, mask = B.corpus_windows(stream, 32, 10, np.random.default_rng(0))
    assert ids.shape == (10, 32) and mask.dtype == np.int32 and (mask == 1).all()
    joined = stream.tobytes()
    assert all(row.tobytes() in joined for row in ids)  # contiguous slices of the stream


def test_mixed_batches(tok):
    make = lambda seed: B.mixed_batches(tok, 8, 96, task_fraction=0.75, seed=seed,  # noqa: E731
                                        corpus_text=SMALL_CORPUS, chunk=16)
    it = make(0)
    first = [next(it) for _ in range(3)]
    for b in first:
        assert b["ids"].shape == b["loss_mask"].shape == (8, 96)
        assert b["ids"].dtype == np.int32 and b["loss_mask"].dtype == np.int32
        assert b["is_task"].tolist() == [True] * 6 + [False] * 2
        assert (b["ids"][:6, 0] == tt.BOS_ID).all() and (b["loss_mask"][6:] == 1).all()
        assert (b["loss_mask"][:6, 0] == 0).all() and (b["loss_mask"][:6].sum(1) >= 17).all()
    assert not np.array_equal(first[0]["ids"], first[1]["ids"])
    again = make(0)
    assert all(np.array_equal(b["ids"], next(again)["ids"]) for b in first)
    assert not np.array_equal(first[0]["ids"], next(make(1))["ids"])


def test_task_only_batches_skip_corpus(tok):
    b = next(B.mixed_batches(tok, 4, 96, task_fraction=1.0, tasks=["sort"], chunk=8))
    assert b["is_task"].all() and (b["ids"][:, 0] == tt.BOS_ID).all()


def test_committed_corpus():
    text = corpus.load_corpus()
    assert 1_000_000 < len(text.encode()) <= 1_500_000
    assert "gutenberg" not in text.lower()
    docs = corpus.split_documents(text)
    assert len(docs) == len(corpus.PLAYS)
    assert docs[0].startswith("HAMLET") and "To be, or not to be" in docs[0]


def test_clean_play_strips_boilerplate():
    raw = ("The Project Gutenberg EBook of Hamlet\r\nlicence text\r\n"
           "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\n\r\n"
           "  HAMLET\r\n\r\n\r\n\r\nHam.   \r\nTo be.\r\n"
           "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\nmore licence\r\n")
    assert corpus.clean_play(raw) == "HAMLET\n\nHam.\nTo be.\n"
