"""A rich progress bar over tensors, shown only on a terminal (quiet in tests and logs)."""

from __future__ import annotations

import sys
from collections.abc import Callable


class Progress:
    """``with Progress(total, "converting") as bar: get = bar.wrap(get)`` advances per tensor."""

    def __init__(self, total: int, description: str, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.total, self.description = total, description
        self._bar = self._task = None

    def __enter__(self) -> "Progress":
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[tensor]}", style="dim"),
                console=Console(stderr=True),
                transient=True,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total, tensor="")
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def wrap(self, get: Callable) -> Callable:
        """``get`` that advances the bar after each call (the name of the tensor shows)."""

        def wrapped(spec):
            out = get(spec)
            if self._bar is not None:
                self._bar.update(self._task, advance=1, tensor=spec.hf_name)
            return out

        return wrapped
