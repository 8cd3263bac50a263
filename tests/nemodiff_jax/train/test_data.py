"""Training batches: a pure function of (seed, step), with the requested share of short rows."""

from __future__ import annotations

import numpy as np
import pytest

from nemodiff_jax.train.data import BatchSource, DataConfig


def _answer_symbols(batch) -> np.ndarray:
    # Answer tokens are one symbol each plus <eos>; loss_mask covers exactly them.
    return batch["loss_mask"].sum(1) - 1


@pytest.mark.parametrize("fraction,expected_short", [(0.0, 0), (0.25, 3), (1.0, 12)])
def test_short_fraction_sets_the_number_of_short_rows(fraction, expected_short):
    src = BatchSource(DataConfig(short_fraction=fraction), batch_size=12, seq_len=80, seed=5)
    for step in (0, 7):
        n = _answer_symbols(src.batch(step))
        # Scored sizes give answers of >= 16 symbols; the short variants give <= 15.
        assert int((n <= 15).sum()) == expected_short


def test_batches_are_a_function_of_seed_and_step():
    make = lambda: BatchSource(DataConfig(short_fraction=0.5), batch_size=8, seq_len=80, seed=2)  # noqa: E731
    a, b = make(), make()
    for step in (3, 0, 3):
        for key in ("ids", "loss_mask"):
            np.testing.assert_array_equal(a.batch(step)[key], b.batch(step)[key])
    assert not np.array_equal(a.batch(0)["ids"], a.batch(1)["ids"])


@pytest.mark.parametrize("field", ["short_fraction", "task_fraction"])
def test_fractions_out_of_range_raise(field):
    with pytest.raises(ValueError, match=field):
        BatchSource(DataConfig(**{field: 1.5}), batch_size=4, seq_len=80, seed=0)
