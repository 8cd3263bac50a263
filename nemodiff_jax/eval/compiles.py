"""Count XLA compilations, so a sweep can show that traced knobs never recompile.

JAX reports every backend compilation as a ``/jax/core/compile/backend_compile_duration``
monitoring event. One process-wide listener feeds a counter that callers read as
``with CompileCounter() as cc: ...; cc.count``. Counts include small eager ops the first
time their shapes are seen, so compare counts of repeated identical calls (expect 0).
"""

from __future__ import annotations

import threading

from jax import monitoring

_EVENT = "/jax/core/compile/backend_compile_duration"
_lock = threading.Lock()
_total = 0
_installed = False


def _listener(name: str, duration: float, **kwargs) -> None:
    global _total
    if name == _EVENT:
        with _lock:
            _total += 1


def total_compiles() -> int:
    """Backend compilations since the listener was installed (installs it on first use)."""
    global _installed
    with _lock:
        if not _installed:
            monitoring.register_event_duration_secs_listener(_listener)
            _installed = True
        return _total


class CompileCounter:
    """Context manager: ``count`` = compilations inside the ``with`` block."""

    def __enter__(self) -> "CompileCounter":
        self._start = total_compiles()
        self.count = 0
        return self

    def __exit__(self, *exc) -> None:
        self.count = total_compiles() - self._start

    @property
    def so_far(self) -> int:
        return total_compiles() - self._start
