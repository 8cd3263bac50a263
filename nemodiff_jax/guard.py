"""Guards shared by every long job: interrupts honoured at safe points, partial files that never
outlive their writer, and the finite-check at the doors.

Interrupts. :func:`handling` installs SIGINT and SIGTERM handlers for a command. Outside a
:func:`deferred` block a signal raises :class:`Interrupted` (a ``KeyboardInterrupt``) at once;
inside one (eval, sweep, train, convert) it only records the signal, the running jitted call
finishes, and the job calls :func:`check` between batches, steps or tensors, where it writes
what it finished (marked partial), removes its temporary files and raises. A second signal
raises wherever the job is; a third ends the process. The command then exits with status 130
through :func:`exit_now`, which flushes and skips interpreter teardown: tearing down while the
XLA runtime's threads are alive is what crashed (SIGSEGV) on Ctrl-C.

Partial files. Writers put their output in ``.NAME.partial-PID`` / ``.NAME.tmp-PID`` beside the
target and rename it into place. :func:`clean_stale` removes such entries whose PID is no longer
running (a writer killed with SIGKILL); every writer calls it before it starts.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sys
import threading
from pathlib import Path

EXIT_INTERRUPTED = 130
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_state = {"installed": False, "deferred": 0, "signum": None, "count": 0}


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised at a safe point (or at once outside a deferred block)."""

    def __init__(self, signum: int = signal.SIGINT, partial: str | None = None):
        super().__init__(signum)
        self.signum = signum
        self.partial = partial  # where the finished part was written, if anywhere

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name if self.signum in iter(signal.Signals) else str(self.signum)
        return f"interrupted by {name}" + (f"; partial results in {self.partial}" if self.partial else "")


def _handler(signum, frame):
    _state["signum"] = signum
    _state["count"] += 1
    if _state["count"] >= 3:
        exit_now(EXIT_INTERRUPTED)
    if _state["deferred"] == 0 or _state["count"] >= 2:
        raise Interrupted(signum)


@contextlib.contextmanager
def handling():
    """SIGINT/SIGTERM handlers for the block (main thread only; nested blocks share the outer one)."""
    if _state["installed"] or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    _state.update(installed=True, signum=None, count=0)
    for s in _SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _state.update(installed=False, signum=None, count=0)


@contextlib.contextmanager
def deferred():
    """Within the block a signal only sets a flag; the job calls :func:`check` at safe points."""
    _state["deferred"] += 1
    try:
        yield
    finally:
        _state["deferred"] -= 1


def requested() -> bool:
    return _state["signum"] is not None


def check(partial: str | None = None) -> None:
    """Raise :class:`Interrupted` (saying where ``partial`` results are) if a signal arrived."""
    if _state["signum"] is not None:
        raise Interrupted(_state["signum"], partial)


def exit_now(code: int) -> None:
    """Flush and leave without interpreter teardown (no atexit, no thread joins)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


# ---------------------------------------------------------------------- partial files
_PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?:partial|old|tmp)-(?P<pid>\d+)$")


def partial_name(target: Path, kind: str = "partial") -> Path:
    """``DIR/.NAME.KIND-PID`` beside ``target``: what :func:`clean_stale` recognises."""
    return target.parent / f".{target.name}.{kind}-{os.getpid()}"


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's live process (or a name we should not touch)
    return True


def clean_stale(directory: Path, name: str | None = None) -> list[Path]:
    """Remove ``.NAME.partial-PID``, ``.NAME.old-PID`` and ``.NAME.tmp-PID`` entries of ``directory``
    (for one ``name``, or any) whose writer process is gone. Returns what was removed."""
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        m = _PARTIAL.match(entry.name)
        if not m or (name is not None and m.group("name") != name) or pid_alive(int(m.group("pid"))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        removed.append(entry)
    return removed


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``path`` through ``.NAME.tmp-PID`` and a rename: never half a file, no temp file left."""
    path = Path(path)
    tmp = partial_name(path, "tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return path


def writable_dir(path, flag: str = "--out") -> Path:
    """Create ``path`` if needed and prove it writable, or a one-line ValueError naming ``flag``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = partial_name(path / "probe", "tmp")
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"{flag} {path} is not writable ({e.strerror or type(e).__name__})") from None
    clean_stale(path)
    return path


# ---------------------------------------------------------------------- non-finite values
def nonfinite_count(arr) -> int:
    """NaN/Inf entries of a float array (0 for integer arrays)."""
    import numpy as np

    dtype = getattr(arr, "dtype", None)
    if dtype is None:
        return 0
    if type(arr).__module__.startswith("jax"):
        import jax.numpy as jnp

        if not jnp.issubdtype(dtype, jnp.floating):
            return 0
        return int(jnp.size(arr) - jnp.count_nonzero(jnp.isfinite(arr)))
    arr = np.asarray(arr)
    if arr.dtype.kind != "f" and arr.dtype.name not in ("bfloat16",) and "float" not in arr.dtype.name:
        return 0
    return int(arr.size - np.count_nonzero(np.isfinite(arr.astype(np.float32, copy=False))))
