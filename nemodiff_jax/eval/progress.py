"""A rich progress bar that degrades to nothing (tests, pipes, ``progress=False``)."""

from __future__ import annotations

import contextlib
import sys


class _Bar:
    def __init__(self, progress, task):
        self._p, self._t = progress, task

    def advance(self, n: int = 1, description: str | None = None) -> None:
        if self._p is not None:
            self._p.update(self._t, advance=n, **({"description": description} if description else {}))


@contextlib.contextmanager
def progress_bar(total: int, enabled: bool = True, description: str = "evaluating"):
    """Yield an object with ``advance(n, description)``; a live rich bar when enabled and on a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield _Bar(None, None)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*cols, transient=False) as p:
        yield _Bar(p, p.add_task(description, total=total))
