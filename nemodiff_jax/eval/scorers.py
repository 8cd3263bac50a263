"""Answer scorers: exact match, last number, and ``\\boxed{}`` answers.

A scorer is ``score(prediction: str, answer: str) -> bool``. ``prediction`` is the decoded
generation cut after its first EOS, with the marker :data:`EOS` appended when the model
stopped (special tokens otherwise dropped), so a scorer can tell a finished answer from a
truncated one. An ``answer`` that ends with :data:`EOS` demands that the model stopped
(the synthetic tasks' convention, ``nemodiff_jax.data.tasks``); otherwise only the text counts.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Callable

EOS = "<eos>"
Scorer = Callable[[str, str], bool]


def _cut(text: str) -> tuple[str, bool]:
    """Text before the first EOS marker, and whether there was one."""
    i = text.find(EOS)
    return (text, False) if i < 0 else (text[:i], True)


def _demands_stop(answer: str) -> tuple[str, bool]:
    body = answer.rstrip()
    return (body[: -len(EOS)], True) if body.endswith(EOS) else (answer, False)


def _norm_ws(s: str) -> str:
    return " ".join(s.split())


def exact_match(prediction: str, answer: str) -> bool:
    """Equal up to surrounding and repeated whitespace; a stop is required iff ``answer`` ends with EOS."""
    pred, stopped = _cut(prediction)
    ans, need_stop = _demands_stop(answer)
    if need_stop and not stopped:
        return False
    return _norm_ws(pred) == _norm_ws(ans)


_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:/\d+)?")


def _numbers(text: str) -> list[str]:
    return [m.group(0) for m in _NUMBER.finditer(text) if any(c.isdigit() for c in m.group(0))]


def parse_number(text: str) -> Fraction | None:
    """``"1,234.50"`` -> 1234.5, ``"-3/4"`` -> -3/4, ``"$12."`` -> 12; None if no number."""
    s = text.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def last_number(text: str) -> Fraction | None:
    """The last number written in ``text`` (GSM8K-style answer extraction)."""
    found = _numbers(text)
    return parse_number(found[-1]) if found else None


def last_number_match(prediction: str, answer: str) -> bool:
    """The last number of the prediction equals the answer's last number (exactly, as fractions)."""
    pred, _ = _cut(prediction)
    ans, _ = _demands_stop(answer)
    want = last_number(ans)
    got = last_number(pred)
    return want is not None and got is not None and got == want


def boxed(text: str) -> str | None:
    """Contents of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced; None if absent."""
    best = None
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            best = text[m.end() : i - 1]
    return best


def _norm_math(s: str) -> str:
    s = s.strip().strip("$").strip()
    for junk in (r"\left", r"\right", r"\!", r"\,", r"\;", r"\displaystyle", " "):
        s = s.replace(junk, "")
    s = re.sub(r"\\(?:text|mathrm|textbf)\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}", r"(\1)/(\2)", s)
    return s.rstrip(".")


def _as_number(s: str) -> Fraction | None:
    s = re.sub(r"^\((-?[\d.]+)\)/\((-?[\d.]+)\)$", r"\1/\2", s)
    return parse_number(s) if re.fullmatch(r"[-+]?[\d,]*\.?\d+(?:/\d+)?\.?", s) else None


def boxed_match(prediction: str, answer: str) -> bool:
    """The last ``\\boxed{}`` of the prediction equals the answer's (or the raw answer), after light
    LaTeX normalisation; numbers compare by value (``\\frac{1}{2}`` == ``0.5``)."""
    pred, _ = _cut(prediction)
    ans, _ = _demands_stop(answer)
    got = boxed(pred)
    want = boxed(ans)
    want = ans if want is None else want
    if got is None:
        return False
    g, w = _norm_math(got), _norm_math(want)
    if g == w and w:
        return True
    gn, wn = _as_number(g), _as_number(w)
    return gn is not None and wn is not None and gn == wn


def similarity(prediction: str, answer: str) -> float:
    """Partial credit in [0, 1]: difflib ratio of the whitespace-split words (EOS markers dropped).

    A secondary metric for small models that rarely get a whole answer right, so sweeps still
    show a trade-off; accuracy stays the headline number.
    """
    import difflib

    pred, _ = _cut(prediction)
    ans, _ = _demands_stop(answer)
    a, b = pred.split(), ans.split()
    if not a and not b:
        return 1.0
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


SCORERS: dict[str, Scorer] = {
    "exact": exact_match,
    "exact_match": exact_match,
    "last_number": last_number_match,
    "number": last_number_match,
    "boxed": boxed_match,
}


def get(name: str) -> Scorer:
    """The scorer registered under ``name``, or a ValueError naming the choices."""
    try:
        return SCORERS[name]
    except KeyError:
        raise ValueError(f"unknown scorer {name!r}; expected one of {sorted(SCORERS)}") from None
