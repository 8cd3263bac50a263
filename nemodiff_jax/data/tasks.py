"""Verifiable synthetic tasks for training and scoring the tri-mode model.

Each task is a generator `make(rng: random.Random) -> (prompt, answer)`, deterministic given
the rng state. Symbols are single lowercase letters or digits separated by spaces, so with our
tokenizer every symbol (with its leading space) is one token:

    prompt  "reverse: q w e r =>"         answer  " r e w q<eos>"

The answer is the literal continuation of the prompt: it starts with a space and ends with
`<eos>` (a special token, id 2), so `prompt + answer` is the whole training text and a
generation is only right if it also stops. Answers hold 16-40 symbols (17-41 tokens with
eos), each a function of the prompt alone, so a good model can draft many of them at once.

Splits: a prompt belongs to "test" iff a hash of it falls in the first TEST_PERCENT buckets,
so train and held-out test never share a prompt, whatever seeds or counts are used.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import random
import string
from collections.abc import Callable, Sequence

EOS = "<eos>"
LETTERS = string.ascii_lowercase
DIGITS = string.digits
SYMBOLS = LETTERS + DIGITS
TEST_PERCENT = 10
SPLITS = ("train", "test")
Range = tuple[int, int]  # inclusive (lo, hi) size range of a generator


@dataclasses.dataclass(frozen=True)
class Task:
    """A named generator; `hard` marks tasks unlikely to reach 90% in a short CPU run."""

    name: str
    make: Callable[[random.Random], tuple[str, str]]
    hard: bool = False

    def resized(self, **sizes: Range) -> Task:
        """The same task with other size ranges, e.g. TASKS["reverse"].resized(n=(16, 20))."""
        return dataclasses.replace(self, make=functools.partial(self.make, **sizes))


def _seq(xs: Sequence[str]) -> str:
    return " ".join(xs)


def _answer(xs: Sequence[str]) -> str:
    return " " + " ".join(xs) + EOS


def _letters(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(LETTERS) for _ in range(n)]


def make_reverse(rng: random.Random, n: Range = (16, 28)) -> tuple[str, str]:
    """Reverse n letters."""
    xs = _letters(rng, rng.randint(*n))
    return f"reverse: {_seq(xs)} =>", _answer(xs[::-1])


def make_sort(rng: random.Random, n: Range = (16, 28)) -> tuple[str, str]:
    """Sort n digits ascending (duplicates kept)."""
    xs = [rng.choice(DIGITS) for _ in range(rng.randint(*n))]
    return f"sort: {_seq(xs)} =>", _answer(sorted(xs))


def make_replace(rng: random.Random, n: Range = (16, 28)) -> tuple[str, str]:
    """Copy n letters, replacing every `src` by `dst`; `src` occurs at least twice."""
    src, dst = rng.sample(LETTERS, 2)
    size = rng.randint(*n)
    while True:
        xs = [src if rng.random() < 0.25 else rng.choice(LETTERS) for _ in range(size)]
        if xs.count(src) >= 2:
            break
    ys = [dst if x == src else x for x in xs]
    return f"replace {src} with {dst}: {_seq(xs)} =>", _answer(ys)


def make_repeat(rng: random.Random, total: Range = (16, 40)) -> tuple[str, str]:
    """Repeat a 4-8 letter pattern k = 3-5 times, `total` symbols in all."""
    k_range = {p: (max(3, -(-total[0] // p)), min(5, total[1] // p)) for p in range(4, 9)}
    patterns = [p for p, (lo, hi) in k_range.items() if lo <= hi]
    if not patterns:
        raise ValueError(f"no pattern length fits total={total}")
    p = rng.choice(patterns)
    k = rng.randint(*k_range[p])
    xs = _letters(rng, p)
    return f"repeat {k}: {_seq(xs)} =>", _answer(xs * k)


def make_zip(rng: random.Random, n: Range = (8, 16)) -> tuple[str, str]:
    """Interleave n letters with n digits: a b | 1 2 => a 1 b 2."""
    size = rng.randint(*n)
    xs, ds = _letters(rng, size), [rng.choice(DIGITS) for _ in range(size)]
    return f"zip: {_seq(xs)} | {_seq(ds)} =>", _answer([s for pair in zip(xs, ds) for s in pair])


def make_shift(rng: random.Random, n: Range = (16, 28)) -> tuple[str, str]:
    """Caesar-shift n letters forward by k = 1-5, wrapping z to a."""
    k = rng.randint(1, 5)
    xs = _letters(rng, rng.randint(*n))
    ys = [LETTERS[(LETTERS.index(x) + k) % 26] for x in xs]
    return f"shift {k}: {_seq(xs)} =>", _answer(ys)


def make_add(rng: random.Random, digits: Range = (16, 20)) -> tuple[str, str]:
    """Add two d-digit numbers (no leading zeros), most significant digit first."""
    d = rng.randint(*digits)
    a, b = (rng.randrange(10 ** (d - 1), 10**d) for _ in range(2))
    return f"add: {_seq(str(a))} + {_seq(str(b))} =>", _answer(str(a + b))


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("reverse", make_reverse),
        Task("sort", make_sort),
        Task("replace", make_replace),
        Task("repeat", make_repeat),
        Task("zip", make_zip),
        Task("shift", make_shift),
        Task("add", make_add, hard=True),
    )
}
DEFAULT_TASKS = tuple(name for name, t in TASKS.items() if not t.hard)

# Sizes below each task's range, for training only: a share of short examples lets a small model
# find the copy/position circuits on easy instances first. Held-out scoring always uses TASKS.
SHORT_SIZES: dict[str, dict[str, Range]] = {
    "reverse": {"n": (2, 15)},
    "sort": {"n": (2, 15)},
    "replace": {"n": (3, 15)},
    "repeat": {"total": (12, 15)},
    "zip": {"n": (1, 7)},
    "shift": {"n": (2, 15)},
    "add": {"digits": (1, 15)},
}


def short_variant(task: str | Task) -> Task:
    """`task` resized to its SHORT_SIZES (same name, so per-task rngs and splits are unchanged)."""
    t = _as_task(task)
    if t.name not in SHORT_SIZES:
        raise ValueError(f"no short sizes for task {t.name!r}; known: {sorted(SHORT_SIZES)}")
    return t.resized(**SHORT_SIZES[t.name])


def split_of(prompt: str) -> str:
    """'test' for a fixed ~TEST_PERCENT% of prompts (by hash), else 'train'."""
    h = int.from_bytes(hashlib.blake2b(prompt.encode(), digest_size=8).digest(), "little")
    return "test" if h % 100 < TEST_PERCENT else "train"


def _as_task(task: str | Task) -> Task:
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {sorted(TASKS)}")
    return TASKS[task]


def sample(task: str | Task, split: str, rng: random.Random) -> tuple[str, str]:
    """Draws from `task` (a name or a Task) until the prompt falls in `split`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    make = _as_task(task).make
    while True:
        prompt, answer = make(rng)
        if split_of(prompt) == split:
            return prompt, answer


def build_task_dataset(
    split: str, n: int, seed: int = 0, tasks: Sequence[str | Task] | None = None
) -> list[tuple[str, str, str]]:
    """`n` distinct (prompt, answer, task_name) examples of `split`, tasks round-robin.

    The round-robin starts at task `seed % len(tasks)`, so many small calls with consecutive
    seeds (one per training step) stay balanced even when n is not a multiple of len(tasks).
    `tasks` holds registry names or Task objects (e.g. resized ones); default DEFAULT_TASKS.
    Each task draws from its own rng seeded by (split, seed, name), so adding a task to the
    list never changes another task's examples.
    """
    chosen = [_as_task(t) for t in (DEFAULT_TASKS if tasks is None else tasks)]
    if not chosen:
        raise ValueError("no tasks given")
    rngs = [random.Random(f"{split}:{seed}:{t.name}") for t in chosen]
    seen: set[str] = set()
    out: list[tuple[str, str, str]] = []
    while len(out) < n:
        i = (seed + len(out)) % len(chosen)
        prompt, answer = sample(chosen[i], split, rngs[i])
        if prompt not in seen:
            seen.add(prompt)
            out.append((prompt, answer, chosen[i].name))
    return out


def exact_match(prediction: str, answer: str) -> bool:
    """True iff the prediction, cut after its first `<eos>`, equals the answer.

    A prediction without `<eos>` (the model never stopped) is wrong; surrounding whitespace
    is ignored.
    """
    cut = prediction.find(EOS)
    if cut < 0:
        return False
    return prediction[: cut + len(EOS)].strip() == answer.strip()


def accuracy(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """Fraction of exact matches."""
    if len(predictions) != len(answers):
        raise ValueError("predictions and answers differ in length")
    return sum(map(exact_match, predictions, answers)) / max(len(answers), 1)
