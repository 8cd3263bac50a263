"""Synthetic tasks: determinism, split disjointness, answers checked by independent solvers."""

from __future__ import annotations

import random
import re

import pytest

from nemodiff_jax.data import tasks as T


def _syms(s: str) -> list[str]:
    return s.split()


def _solve(name: str, prompt: str) -> list[str]:
    """Brute-force reference answers, parsed from the prompt text alone."""
    head, body = prompt.removesuffix(" =>").split(": ", 1)
    xs = _syms(body)
    if name == "reverse":
        return list(reversed(xs))
    if name == "sort":
        return sorted(xs, key=int)
    if name == "replace":
        src, dst = re.fullmatch(r"replace (\w) with (\w)", head).groups()
        return [dst if x == src else x for x in xs]
    if name == "repeat":
        k = int(head.split()[1])
        return [x for _ in range(k) for x in xs]
    if name == "zip":
        left, right = body.split(" | ")
        out = []
        for a, d in zip(_syms(left), _syms(right), strict=True):
            out += [a, d]
        return out
    if name == "shift":
        k = int(head.split()[1])
        abc = "abcdefghijklmnopqrstuvwxyz"
        table = dict(zip(abc, abc[k:] + abc[:k]))
        return [table[x] for x in xs]
    if name == "add":
        a, b = body.split(" + ")
        return list(str(int("".join(_syms(a))) + int("".join(_syms(b)))))
    raise KeyError(name)


def test_every_task_has_a_reference_solver():
    for name in T.TASKS:
        prompt, _ = T.TASKS[name].make(random.Random(0))
        _solve(name, prompt)  # raises KeyError for a task the tests do not know


@pytest.mark.parametrize("name", list(T.TASKS))
def test_answers_match_reference(name):
    examples = T.build_task_dataset("train", 200, seed=3, tasks=[name])
    examples += T.build_task_dataset("test", 50, seed=3, tasks=[name])
    for prompt, answer, task in examples:
        assert task == name
        assert answer.startswith(" ") and answer.endswith(T.EOS)
        assert prompt.endswith(" =>") and T.EOS not in prompt
        ys = _syms(answer.removesuffix(T.EOS))
        assert ys == _solve(name, prompt), prompt
        assert all(len(y) == 1 and y in T.SYMBOLS for y in ys)
        assert 16 <= len(ys) <= 40


def test_dataset_is_deterministic_and_seeded():
    a = T.build_task_dataset("train", 200, seed=7)
    assert a == T.build_task_dataset("train", 200, seed=7)
    assert a != T.build_task_dataset("train", 200, seed=8)
    # Tasks are round-robin and each task has its own rng: a subset list reproduces its rows.
    k = len(T.DEFAULT_TASKS)
    assert [e[2] for e in a[:k]] == [T.DEFAULT_TASKS[(7 + i) % k] for i in range(k)]
    only_sort = T.build_task_dataset("train", 20, seed=7, tasks=["sort"])
    assert only_sort == [e for e in a if e[2] == "sort"][:20]


def test_splits_are_disjoint():
    everything = list(T.TASKS)
    train = {p for s in range(2) for p, _, _ in T.build_task_dataset("train", 1400, s, everything)}
    test = {p for s in range(2) for p, _, _ in T.build_task_dataset("test", 280, s, everything)}
    assert not train & test
    assert all(T.split_of(p) == "train" for p in train)
    assert all(T.split_of(p) == "test" for p in test)
    rng = random.Random(0)
    share = sum(T.split_of(T.make_reverse(rng)[0]) == "test" for _ in range(4000)) / 4000
    assert abs(share - T.TEST_PERCENT / 100) < 0.02


def test_dataset_has_no_duplicate_prompts():
    prompts = [p for p, _, _ in T.build_task_dataset("test", 600, seed=0)]
    assert len(set(prompts)) == len(prompts)


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        T.build_task_dataset("valid", 1)
    with pytest.raises(ValueError):
        T.build_task_dataset("train", 1, tasks=["nope"])


def test_exact_match():
    ans = " c b a<eos>"
    assert T.exact_match(" c b a<eos>", ans)
    assert T.exact_match(" c b a<eos><pad> z z", ans)  # whatever follows eos is ignored
    assert not T.exact_match(" c b a", ans)  # never stopped
    assert not T.exact_match(" c b a b<eos>", ans)
    assert not T.exact_match(" c b<eos>", ans)
    assert T.accuracy([" c b a<eos>", " a<eos>"], [ans, ans]) == 0.5


def test_resized_tasks():
    short = T.TASKS["reverse"].resized(n=(16, 18))
    examples = T.build_task_dataset("train", 50, seed=0, tasks=[short, "zip"])
    assert {e[2] for e in examples} == {"reverse", "zip"}
    for prompt, answer, name in examples:
        ys = _syms(answer.removesuffix(T.EOS))
        assert ys == _solve(name, prompt)
        if name == "reverse":
            assert 16 <= len(ys) <= 18
    with pytest.raises(ValueError):
        T.TASKS["repeat"].resized(total=(13, 14)).make(random.Random(0))


@pytest.mark.parametrize("name", list(T.TASKS))
def test_short_variants_are_short_and_correct(name):
    """Training-only short examples: solvable, and every answer shorter than the scored range."""
    short = T.short_variant(name)
    assert short.name == name
    for prompt, answer, task in T.build_task_dataset("train", 60, seed=1, tasks=[short]):
        ys = _syms(answer.removesuffix(T.EOS))
        assert ys == _solve(task, prompt)
        # Every scored answer has at least 16 symbols (the add answer at least 16 digits).
        assert len(ys) <= 16 if name == "add" else len(ys) <= 15


def test_short_variant_of_unknown_task_raises():
    with pytest.raises(ValueError, match="unknown task"):
        T.short_variant("nope")
