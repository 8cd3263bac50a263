"""Scorers on edge cases, and the JSONL task format."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from nemodiff_jax.data import tasks as T
from nemodiff_jax.eval import datasets, scorers
from nemodiff_jax.eval.scorers import EOS, boxed, boxed_match, exact_match, last_number, last_number_match, similarity


@pytest.mark.parametrize(
    "pred, answer, want",
    [
        (" r e w q<eos>", " r e w q<eos>", True),
        ("r  e w q <eos> junk after", " r e w q<eos>", True),  # whitespace and text after EOS ignored
        (" r e w q", " r e w q<eos>", False),  # the answer demands a stop
        (" r e w q", " r e w q", True),  # ... this one does not
        (" r e w<eos>", " r e w q<eos>", False),
        ("<eos>", "<eos>", True),  # empty answer
        ("", "x", False),
    ],
)
def test_exact_match(pred, answer, want):
    assert exact_match(pred, answer) is want


def test_exact_match_agrees_with_task_scorer():
    ex = datasets.synthetic(3, ["reverse", "sort"])
    for e in ex:
        for pred in (e.answer, e.answer.replace(EOS, ""), " x" + e.answer, e.answer + " tail"):
            assert exact_match(pred, e.answer) == T.exact_match(pred, e.answer), (pred, e.answer)


@pytest.mark.parametrize(
    "text, want",
    [
        ("so the answer is 42.", Fraction(42)),
        ("1,234.50 dollars", Fraction("1234.5")),
        ("from 3 to -7", Fraction(-7)),
        ("ratio 3/4", Fraction(3, 4)),
        ("no digits here", None),
        ("version 2 then 0.5", Fraction(1, 2)),
    ],
)
def test_last_number(text, want):
    assert last_number(text) == want


def test_last_number_match():
    assert last_number_match("... so 18 eggs. #### 18<eos>", "18")
    assert last_number_match("It costs $1,000.", "1000")
    assert last_number_match("x = 2.50", "2.5")
    assert not last_number_match("x = 2.51", "2.5")
    assert not last_number_match("no answer", "3")
    assert not last_number_match("7", "no number")
    # Numbers after the EOS are not part of the answer.
    assert not last_number_match("5<eos> 7", "7")


@pytest.mark.parametrize(
    "text, want",
    [
        (r"the answer is \boxed{12}", "12"),
        (r"\boxed{\frac{1}{2}} and later \boxed{3}", "3"),  # the last one
        (r"\boxed{{a}+{b}}", "{a}+{b}"),  # nested braces
        (r"\boxed{}", ""),
        (r"\boxed{unclosed", None),
        (r"\fbox{x}", "x"),
        ("nothing", None),
    ],
)
def test_boxed_extraction(text, want):
    assert boxed(text) == want


def test_boxed_match():
    assert boxed_match(r"so \boxed{\frac{1}{2}}", "0.5")
    assert boxed_match(r"\boxed{ 1/2 }", r"\boxed{\dfrac{1}{2}}")
    assert boxed_match(r"$\boxed{x^2+1}$.", "x^2 + 1")
    assert boxed_match(r"\boxed{\text{yes}}", "yes")
    assert boxed_match(r"\boxed{1,000}", "1000")
    assert not boxed_match(r"\boxed{}", "")  # an empty box answers nothing
    assert not boxed_match("42", "42")  # no box, no credit
    assert not boxed_match(r"\boxed{3}", "4")


def test_similarity_is_partial_credit():
    assert similarity(" a b c<eos>", " a b c<eos>") == 1.0
    assert similarity("<eos>", "<eos>") == 1.0
    assert similarity(" x y z", " a b c<eos>") == 0.0
    assert 0.0 < similarity(" a b x<eos>", " a b c<eos>") < 1.0
    assert similarity(" a b c<eos> d e", " a b c") == 1.0  # text after EOS is not scored


def test_unknown_scorer():
    with pytest.raises(ValueError, match="unknown scorer"):
        scorers.get("fuzzy")


def test_jsonl_roundtrip_and_errors(tmp_path):
    rows = [
        {"prompt": "2+2=", "answer": "4", "scorer": "last_number", "task": "arith"},
        {"prompt": "box it", "answer": "7", "scorer": "boxed"},
        {"prompt_ids": [1, 5, 6], "answer": "x"},
    ]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    ex = datasets.load_tasks([str(path)], n=0)
    assert [e.task for e in ex] == ["arith", "mine", "mine"]
    assert [e.scorer for e in ex] == ["last_number", "boxed", "exact"]
    assert ex[2].prompt_ids == (1, 5, 6)
    again = datasets.read_jsonl(datasets.write_jsonl(ex, tmp_path / "again.jsonl"))
    assert again == ex
    assert len(datasets.load_tasks(str(path), n=2)) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        datasets.read_jsonl(bad)
    bad.write_text('{"prompt": "a", "answer": "b", "scorer": "nope"}\n')
    with pytest.raises(ValueError, match="unknown scorer"):
        datasets.read_jsonl(bad)
    with pytest.raises(ValueError, match="unknown task spec"):
        datasets.load_tasks("nonsense")


def test_synthetic_specs_are_held_out_and_deterministic():
    a = datasets.load_tasks("synthetic:reverse,zip", n=3)
    b = datasets.load_tasks(["reverse", "zip"], n=3)
    assert [e.task for e in a].count("reverse") == 3 and len(a) == 6
    assert {e.prompt for e in a} == {e.prompt for e in b}
    assert all(T.split_of(e.prompt) == "test" for e in a)
