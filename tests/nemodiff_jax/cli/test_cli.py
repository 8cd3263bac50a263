"""The ``nemodiff`` command line, end to end: driven as a subprocess (``python -m nemodiff_jax``,
the streaming canvas through a pseudo-terminal) on a tiny random model directory made here,
plus in-process checks of the error contract (one line on stderr, exit status 2).

Cost: JAX import and compilation dominate, so the subprocesses share a persistent compilation
cache and the same shapes (batch 1, prompts under 16 tokens, 16 new tokens, block 8,
threshold 0.9): the demo compiles every mode once, later runs reuse it.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

import nemodiff_jax as nd
from nemodiff_jax import cli
from nemodiff_jax.io.tokenizer import Tokenizer

from ..io.test_tokenizer import build_tokenizer_dir

REPO = Path(__file__).resolve().parents[3]
MODES = ("ar", "diffusion", "linear_spec", "quadratic_spec")
SHARED = ["--max-new-tokens", "16", "--threshold", "0.9"]


def _has_generate() -> bool:
    try:
        import nemodiff_jax.decode.generate
    except ImportError:
        return False
    return True


needs_generate = pytest.mark.skipif(not _has_generate(), reason="nemodiff_jax.decode.generate is not there yet")


def numpy_params(cfg, seed: int = 0):
    """Random parameters of the right tree without compiling the Flax init (norm scales at one)."""
    import jax

    rng = np.random.default_rng(seed)

    def leaf(path, spec):
        if "norm" in jax.tree_util.keystr(path):
            return np.ones(spec.shape, spec.dtype)
        return (rng.standard_normal(spec.shape) * 0.05).astype(spec.dtype)

    return jax.tree_util.tree_map_with_path(leaf, nd.abstract_params(cfg))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """config.json + model.safetensors (random tiny weights) + tokenizer.json with a chat template."""
    from safetensors.numpy import save_file

    from nemodiff_jax.io.keymap import iter_hf_tensors

    d = build_tokenizer_dir(tmp_path_factory.mktemp("tiny_model"))
    cfg = nd.NLDConfig.preset("tiny").replace(num_layers=1, hidden_size=64, intermediate_size=128, num_heads=2,
                                              num_kv_heads=1, vocab_size=512, max_position_embeddings=256)
    (d / "config.json").write_text(json.dumps(cfg.to_hf_dict()))
    tensors = {k: np.asarray(v) for k, v in iter_hf_tensors(cfg, numpy_params(cfg))}
    save_file(tensors, str(d / "model.safetensors"))
    return d


@pytest.fixture(scope="module")
def env(request, tmp_path_factory) -> dict:
    cache = getattr(request.config, "cache", None)
    compile_dir = cache.mkdir("nemodiff-jax-compile") if cache else tmp_path_factory.mktemp("jax-compile")
    e = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
             JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", COLUMNS="120", TERM="xterm-256color",
             JAX_COMPILATION_CACHE_DIR=str(compile_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    e.pop("NO_COLOR", None)
    return e


def nemodiff(env, *args, stdin: str | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nemodiff_jax", *map(str, args)], input=stdin, text=True,
                          capture_output=True, env=env, cwd=REPO, timeout=timeout)


def nemodiff_pty(env, *args, timeout: int = 600) -> tuple[int, str]:
    """Run with stdin/stdout/stderr on a pseudo-terminal, as a user's terminal would."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "nemodiff_jax", *map(str, args)], stdin=slave, stdout=slave,
                            stderr=slave, env=env, cwd=REPO, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    else:
        proc.kill()
    os.close(master)
    return proc.wait(), b"".join(chunks).decode("utf-8", "replace")


def assert_one_line_error(stderr: str, *needles: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("nemodiff: error: ") and "Traceback" not in stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


# ---------------------------------------------------------------------- subprocess: help and errors
def test_help_lists_every_command(env):
    r = nemodiff(env, "--help")
    assert r.returncode == 0, r.stderr
    for command in ("generate", "chat", "demo", "convert", "train", "eval", "sweep", "oracle", "bench"):
        assert command in r.stdout
    assert "examples:" in r.stdout


@pytest.mark.parametrize("command", ["generate", "chat", "demo"])
def test_subcommand_help_has_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "examples:" in out and "--model" in out
    if command != "demo":
        assert "replay" in out  # honest about how streaming works


def test_missing_model_is_one_line_and_debug_shows_traceback(env, tmp_path, capsys):
    r = nemodiff(env, "generate", "--model", tmp_path / "nope", "--prompt", "hi")
    assert r.returncode == 2
    assert_one_line_error(r.stderr, "does not exist", "--model")
    assert cli.main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "hi", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("nemodiff: error:")


# ---------------------------------------------------------------------- subprocess: generation
@needs_generate
def test_demo_every_mode(env, model_dir):
    r = nemodiff(env, "demo", "--model", model_dir, "--prompt", "the quick brown", "--prompt", "lazy dog",
                 "--json", *SHARED)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    runs = {(x["mode"], x["prompt_index"]): x for x in out["runs"]}
    assert {m for m, _ in runs} == set(MODES) and not out["random_fallback"]
    for (mode, i), x in runs.items():
        assert 1 <= len(x["tokens"]) <= 16 and x["nfe"] >= 1
        assert x["tpf"] == pytest.approx(len(x["tokens"]) / x["nfe"])
        if mode in ("linear_spec", "quadratic_spec"):  # lossless at temperature 0
            assert x["identical_to_ar"] == "yes" and x["tokens"] == runs[("ar", i)]["tokens"]
    assert runs[("ar", 0)]["nfe"] == len(runs[("ar", 0)]["tokens"])  # AR: one token per pass


@needs_generate
def test_generate_json(env, model_dir):
    r = nemodiff(env, "generate", "--model", model_dir, "--prompt", "the quick brown", "--mode", "diffusion",
                 "--json", *SHARED)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["mode"] == "diffusion" and out["knobs"]["threshold"] == 0.9
    (row,) = out["results"]
    tok = Tokenizer.from_dir(model_dir, nd.NLDConfig.from_hf(model_dir))
    assert row["prompt_ids"] == tok.encode("the quick brown", add_bos=True)
    assert row["text"] == tok.decode(row["tokens"]) and row["num_tokens"] == len(row["tokens"]) <= 16
    commit = row["stats"]["commit_pass"]
    assert len(commit) == len(row["tokens"]) and 0 <= min(commit) and max(commit) <= row["nfe"]


@needs_generate
def test_canvas_in_a_terminal(env, model_dir):
    rc, out = nemodiff_pty(env, "generate", "--model", model_dir, "--prompt", "the quick brown", "--mode",
                           "diffusion", "--show-canvas", "--replay-delay", "0.01", *SHARED)
    assert rc == 0, out
    from nemodiff_jax.cli.view import MASK_GLYPH

    assert out.count("pass ") >= 3 and MASK_GLYPH in out  # several frames, masked slots drawn
    assert "\x1b[1;30;42m" in out  # just-committed tokens highlighted (bold black on green)
    assert "done · " in out and "[diffusion]" in out and "TPF" in out


@needs_generate
def test_chat_turns_reset_and_commands(env, model_dir):
    # AR with 4 new tokens keeps the second turn's prompt (history included) in the 16-token bucket
    # the demo compiled.
    script = "hi\n/mode nonsense\nagain\n/reset\n/what\nfresh\n/exit\nnever read\n"
    r = nemodiff(env, "chat", "--model", model_dir, "--mode", "ar", "--max-new-tokens", "4", stdin=script)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("[ar]") == 3  # one statistics line per answered turn
    assert "(history cleared)" in r.stderr and "/mode wants one of" in r.stderr and "commands are" in r.stderr
    assert len([line for line in r.stdout.splitlines()]) >= 3


# ---------------------------------------------------------------------- in-process: the error contract
@pytest.mark.parametrize("knobs,needles", [
    (["--threshold", "2"], ["threshold", "--help"]),
    (["--top-p", "0"], ["top_p"]),
    (["--policy", "bogus"], ["bogus", "threshold"]),
    (["--policy-param", "warp=9"], ["policy_params", "warp"]),
    (["--policy-param", "nonsense"], ["KEY=VALUE"]),
    (["--mode", "diffusion", "--block-length", "3"], ["block_length"]),
    (["--max-new-tokens", "1000"], ["max_position_embeddings", "shorten the prompt"]),
    (["--temperature", "warm"], ["--temperature", "invalid float"]),
])
@needs_generate
def test_bad_knobs(model_dir, capsys, knobs, needles):
    rc = cli.main(["generate", "--model", str(model_dir), "--prompt", "hi", *knobs])
    assert rc == 2
    assert_one_line_error(capsys.readouterr().err, *needles)


def test_errors_without_a_model(capsys, tmp_path):
    assert cli.main(["generate", "--model", str(tmp_path), "--prompt", "x"]) == 2
    assert_one_line_error(capsys.readouterr().err, "config.json", "--model")
    assert cli.main(["generate", "--model", str(tmp_path)]) == 2
    assert_one_line_error(capsys.readouterr().err, "--prompt")
    assert cli.main(["bench"]) == 2
    assert_one_line_error(capsys.readouterr().err, "kernels")
    assert cli.main(["nonsense"]) == 2
    assert_one_line_error(capsys.readouterr().err, "invalid choice")


def test_corrupt_checkpoint_is_one_line(model_dir, tmp_path, capsys):
    import shutil

    bad = shutil.copytree(model_dir, tmp_path / "bad")
    (bad / "model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes()[:1000])
    assert cli.main(["generate", "--model", str(bad), "--prompt", "hi"]) == 2
    assert_one_line_error(capsys.readouterr().err, "safetensors", "--model")


def test_delegation(monkeypatch, capsys):
    seen = []
    fake = types.ModuleType("fake_train_cli")
    fake.main = lambda argv: seen.append(argv) or 3
    monkeypatch.setitem(sys.modules, "fake_train_cli", fake)
    monkeypatch.setitem(cli.DELEGATES, "train", ("fake_train_cli", "main", "", ""))
    assert cli.main(["train", "--steps", "5", "--debug", "x"]) == 3
    assert seen == [["--steps", "5", "x"]]

    def broken(argv):
        raise ValueError("no such\ndataset")

    fake.main = broken
    assert cli.main(["train"]) == 2
    assert_one_line_error(capsys.readouterr().err, "no such dataset", "--debug")
    monkeypatch.setitem(cli.DELEGATES, "eval", ("nemodiff_jax.no_such_module", "eval_main", "", ""))
    assert cli.main(["eval", "--help"]) == 2
    assert_one_line_error(capsys.readouterr().err, "not available", "nemodiff_jax.no_such_module")
    monkeypatch.setitem(cli.BENCH, "kernels", ("fake_train_cli", "nope", ""))
    assert cli.main(["bench", "kernels"]) == 2
    assert_one_line_error(capsys.readouterr().err, "no nope()")


def test_demo_falls_back_to_a_random_model_with_a_note(monkeypatch, capsys, tmp_path):
    from nemodiff_jax.cli import demo as cli_demo
    from nemodiff_jax.io import checkpoint
    from nemodiff_jax.model import forward

    monkeypatch.setattr(checkpoint, "EMBEDDED_DIR", tmp_path / "absent")
    monkeypatch.setattr(forward, "init_params", lambda cfg, seed=0: numpy_params(cfg, seed))
    seen = {}

    def fake_run_all(model, prompts, modes, args, err):
        seen.update(path=model.path, prompts=prompts, modes=modes)
        return [dict(mode=m, prompt_index=i, tokens=[2], text="x", nfe=1, tpf=1.0, wall_time=0.1,
                     tokens_per_s=10.0, identical_to_ar="yes" if m != "ar" else "(reference)")
                for m in modes for i in range(len(prompts))]

    monkeypatch.setattr(cli_demo, "run_all", fake_run_all)
    assert cli.main(["demo", "--modes", "ar,linear_spec"]) == 0
    captured = capsys.readouterr()
    assert "RANDOM" in captured.err and seen["path"] == "random:tiny" and seen["modes"] == ["ar", "linear_spec"]
    assert len(seen["prompts"]) == len(cli_demo.DEFAULT_PROMPTS) and all(p[0] == 1 for p in seen["prompts"])
    assert "summary" in captured.out and "linear_spec" in captured.out
    assert cli.main(["demo", "--modes", "ar,warp"]) == 2
