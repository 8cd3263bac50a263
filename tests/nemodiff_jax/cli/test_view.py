"""The replay views and the demo table, in-process on hand-made commit orders (no model, no compile)."""

from __future__ import annotations

import io

import numpy as np
from rich.console import Console

from nemodiff_jax.cli import demo as cli_demo, view as cli_view


def test_commit_order_and_frames():
    order = cli_view.commit_order(4, [0, 3, 2, 3, -1, -1])
    assert order.tolist() == [0, 3, 2, 3]
    assert cli_view.frames(order) == [0, 2, 3]
    assert cli_view.commit_order(3, None).tolist() == [1, 2, 3]  # one token per pass when unknown
    assert cli_view.replay_delay(10, None, interactive=False) == 0.0
    assert 0 < cli_view.replay_delay(1000, None, interactive=True) <= 0.05
    assert cli_view.replay_delay(10, 0.2, interactive=False) == 0.2


def test_stream_prints_growing_committed_prefix():
    # Diffusion-like order: token 2 is committed before token 1, so the prefix waits for it.
    words = ["a", "b", "c", "d"]
    order = np.array([0, 2, 1, 3])
    seen = []
    cli_view.stream([0, 1, 2, 3], order, lambda ids: "".join(words[i] for i in ids), seen.append, delay=0.0)
    assert "".join(seen) == "abcd"
    assert [s for s in seen if s] == ["a", "bc", "d"]


def test_stream_holds_back_partial_utf8():
    pieces = {0: b"\xe6", 1: b"\x9d", 2: b"\xb1", 3: b"!"}  # "東" split over three byte tokens

    def decode(ids):
        return b"".join(pieces[i] for i in ids).decode("utf-8", "replace")

    seen = []
    cli_view.stream([0, 1, 2, 3], np.array([1, 2, 3, 4]), decode, seen.append, delay=0.0)
    assert "".join(seen) == "東!" and "\ufffd" not in "".join(seen)


def test_canvas_masks_just_committed_and_settled():
    pieces = ["A", "B", "C", "D", "E", "F"]
    order = np.array([0, 2, 1, 3, 5, 4])  # block length 4: tokens 4-5 start block 2
    special = [False] * 6
    text = cli_view.canvas(pieces, special, order, 1, block_length=4, masked_blocks=True)
    assert text.plain == "A" + cli_view.MASK_GLYPH + "C" + cli_view.MASK_GLYPH
    spans = {text.plain[s.start:s.end]: str(s.style) for s in text.spans}
    assert spans["C"] == cli_view.STYLE_JUST and spans[cli_view.MASK_GLYPH] == cli_view.STYLE_MASK
    # Pass 4 commits token 5 of the second block: the first block is settled, token 4 still masked.
    text = cli_view.canvas(pieces, special, order, 4, block_length=4, masked_blocks=True, header="h")
    assert text.plain == "h\nABCD" + cli_view.MASK_GLYPH + "F"
    # Without blocks (speculation) the output is the committed prefix, never masks.
    assert cli_view.canvas(pieces, special, np.array([1, 1, 2, 2, 3, 3]), 2, 4, False).plain == "ABCD"


def test_show_canvas_renders_frames_to_a_terminal():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=60, color_system="standard")
    cli_view.show_canvas(console, [0, 1, 2, 3], np.array([0, 2, 1, 2]), lambda t: "wxyz"[t], lambda t: False,
                         block_length=4, masked_blocks=True, delay=0.0, total_passes=3, title="[diffusion] ")
    out = buf.getvalue()
    assert "pass 1/3" in out and "pass 2/3" in out and "done · 4 tokens in 3 forward passes" in out
    assert cli_view.MASK_GLYPH in out and "\x1b[" in out


def test_demo_identity_and_table():
    assert cli_demo.first_difference([1, 2, 3], [1, 2, 3]) is None
    assert cli_demo.first_difference([1, 2, 4], [1, 2, 3]) == 2
    assert cli_demo.first_difference([1, 2], [1, 2, 3]) == 2
    assert cli_demo.identity("linear_spec", [1, 2], [1, 2]) == "yes"
    assert cli_demo.identity("quadratic_spec", [1, 3], [1, 2]).startswith("NO")
    assert cli_demo.identity("diffusion", [1, 3], [1, 2]) == "—"
    runs = [dict(mode=m, prompt_index=0, tokens=[5, 6, 7], text=f"out-{m}", nfe=n, tpf=3 / n, wall_time=0.5,
                 tokens_per_s=6.0, identical_to_ar=cli_demo.identity(m, [5, 6, 7], [5, 6, 7]))
            for m, n in (("ar", 3), ("linear_spec", 2))]
    buf = io.StringIO()

    class M:
        path = "tiny"

    cli_demo.render(Console(file=buf, width=160), M, ["p"], ["ar", "linear_spec"], runs)
    out = buf.getvalue()
    for needle in ("out-ar", "out-linear_spec", "forward passes", "TPF", "1.50", "identical to AR", "yes",
                   "summary", "1/1"):
        assert needle in out, needle
