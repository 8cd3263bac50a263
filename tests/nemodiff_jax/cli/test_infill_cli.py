"""``nemodiff infill`` on the shipped model, in process; and the defaults ``--help`` prints."""

from __future__ import annotations

import json

import pytest

from nemodiff_jax import cli


def test_infill_json_and_canvas(capsys):
    # reverse: a b c d => d c b a; the middle two tokens are cut out
    assert cli.main(["infill", "--prefix", "reverse: a b c d =>", "--suffix", " b a", "--length", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["text"] == " d c" and out["nfe"] == 2 and sorted(out["commit_pass"]) == [1, 2]
    assert out["compile_time"] >= 0 and out["decode_time"] > 0
    assert cli.main(["infill", "--prefix", "reverse: a b c d =>", "--suffix", " b a", "--length", "2",
                     "--show-canvas"]) == 0
    cap = capsys.readouterr()
    lines = cap.out.strip().splitlines()
    assert lines[0].endswith("[__] b a") and lines[-1].endswith("[ d c] b a")
    assert "decode" in cap.err and "compile" in cap.err


def test_infill_bad_length_is_one_line(capsys):
    assert cli.main(["infill", "--prefix", "x", "--length", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "length" in err[0]


def test_generate_help_prints_the_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "default 0.9" in out and "SGLang" in out and "default 0: one draft pass" in out
