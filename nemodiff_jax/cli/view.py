"""Terminal views of a finished generation: a streamed text replay and a live diffusion canvas.

Why a replay: ``generate()`` runs the whole decode loop on the device in one call, so there is
nothing to show until it returns. Every mode records ``stats["commit_pass"]`` (the forward
pass that committed each token), so afterwards we replay the commits pass by pass with a
short delay. The order and grouping are exactly the decoder's; the timing is not (it is a
replay at a fixed pace, not the real-time progress of the device loop).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

MASK_GLYPH = "░"
STYLE_SETTLED = ""
STYLE_JUST = "bold black on green"
STYLE_MASK = "cyan"
STYLE_SPECIAL = "dim italic"


def commit_order(num_tokens: int, commit_pass: Sequence[int] | None) -> np.ndarray:
    """int[num_tokens]: the pass that committed each token (one token per pass if unknown)."""
    if commit_pass is None:
        return np.arange(1, num_tokens + 1)
    order = np.asarray(commit_pass, np.int64)[:num_tokens]
    return np.maximum(order, 0)


def frames(order: np.ndarray) -> list[int]:
    """The passes that committed something, in order: one frame each."""
    return sorted(set(order.tolist()))


def replay_delay(num_frames: int, requested: float | None, interactive: bool) -> float:
    """Seconds per frame: the request, else ~2 s for the whole replay (at most 50 ms a frame)."""
    if requested is not None:
        return max(0.0, float(requested))
    if not interactive or num_frames == 0:
        return 0.0
    return min(0.05, 2.0 / num_frames)


class PrefixPrinter:
    """Writes the text of a growing token prefix, holding back half-decoded UTF-8 characters."""

    def __init__(self, decode: Callable[[list[int]], str], write: Callable[[str], object]):
        self.decode, self.write, self.shown = decode, write, ""

    def update(self, ids: list[int], final: bool = False) -> None:
        text = self.decode(ids)
        if text.endswith("\ufffd") and not final:
            return
        if text.startswith(self.shown):
            self.write(text[len(self.shown):])
        else:  # a merge changed earlier characters (rare with byte-level BPE): rewrite the line
            self.write("\n" + text)
        self.shown = text


def stream(tokens: list[int], order: np.ndarray, decode, write, delay: float, flush=lambda: None) -> None:
    """Replay as text: after each pass, print the longest prefix whose tokens are all committed."""
    printer = PrefixPrinter(decode, write)
    done = 0
    for p in frames(order):
        while done < len(tokens) and order[done] <= p:
            done += 1
        printer.update(tokens[:done])
        flush()
        if delay:
            time.sleep(delay)
    printer.update(tokens, final=True)
    flush()


def canvas(pieces: list[str], special: list[bool], order: np.ndarray, upto: int, block_length: int,
           masked_blocks: bool, header: str = ""):
    """A rich Text of the output after pass ``upto``.

    settled tokens (earlier passes) plain, tokens committed by this pass highlighted, and, when
    ``masked_blocks`` (diffusion), the rest of the block(s) being denoised as mask glyphs.
    """
    from rich.text import Text

    n = len(pieces)
    just = np.flatnonzero(order == upto)
    end = int(np.max(np.flatnonzero(order <= upto), initial=-1)) + 1
    if masked_blocks and just.size and block_length > 1:
        end = min(n, (int(just.max()) // block_length + 1) * block_length)
    out = Text(header + "\n" if header else "")
    for i in range(end):
        if order[i] > upto:
            out.append(MASK_GLYPH, STYLE_MASK)
        elif order[i] == upto:
            out.append(pieces[i], STYLE_JUST)
        else:
            out.append(pieces[i], STYLE_SPECIAL if special[i] else STYLE_SETTLED)
    return out


def show_canvas(console, tokens: list[int], order: np.ndarray, piece: Callable[[int], str],
                is_special: Callable[[int], bool], block_length: int, masked_blocks: bool, delay: float,
                total_passes: int | None = None, title: str = "") -> None:
    """Animate ``canvas`` frame by frame with rich.Live, ending on the settled output."""
    from rich.live import Live

    pieces = [piece(t) for t in tokens]
    special = [is_special(t) for t in tokens]
    passes = frames(order)
    last = passes[-1] if passes else 0
    total = max(total_passes or 0, last)
    with Live(console=console, auto_refresh=False, transient=False) as live:
        for p in passes:
            committed = int(np.sum(order <= p))
            header = f"{title}pass {p}/{total} · {committed}/{len(tokens)} tokens committed"
            live.update(canvas(pieces, special, order, p, block_length, masked_blocks, header), refresh=True)
            if delay:
                time.sleep(delay)
        header = f"{title}done · {len(tokens)} tokens in {total} forward passes"
        live.update(canvas(pieces, special, order, last + 1, block_length, masked_blocks, header), refresh=True)
