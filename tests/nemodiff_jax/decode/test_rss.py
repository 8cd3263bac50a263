"""Peak RSS of ``generate`` with the real 131k vocabulary and long prompts (docs/MEMORY.md).

CI: AR on six 1,500-token prompts, 16 new tokens, in a fresh process, under 2.5 GiB (the
one-shot prefill's ``[6, 2048, 131072]`` float32 logits alone were 6 GiB). Every mode with 64
new tokens: ``NEMODIFF_RSS_FULL=1``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
TARGET_GIB = 2.5


def run(mode: str, new: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-m", "nemodiff_jax.decode.rss", "--mode", mode, "--new", str(new)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_ar_long_prompts_big_vocab_under_target():
    r = run("ar", 16)
    assert r["peak_rss_gib"] < TARGET_GIB, r


@pytest.mark.skipif(not os.environ.get("NEMODIFF_RSS_FULL"), reason="every mode, 64 tokens: NEMODIFF_RSS_FULL=1")
@pytest.mark.parametrize("mode", ["ar", "diffusion", "linear_spec", "quadratic_spec"])
def test_every_mode_under_target(mode):
    r = run(mode, 64)
    assert r["peak_rss_gib"] < TARGET_GIB, r
