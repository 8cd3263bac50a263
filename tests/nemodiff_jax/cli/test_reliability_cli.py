"""Issue 17 at the command line: interrupts (a real signal sent to a real subprocess), the
partial output they leave and what is left on disk; one error style (one line on stderr, exit
status 2) for the cases that used to print tracebacks; non-finite and tampered weights refused.

The interrupt tests run the real ``nemodiff`` entry point in a subprocess whose one slow step
(a batch, a tensor) is wrapped to announce itself on stderr and linger 0.5 s, so the signal
lands mid-job at a known point instead of after a guessed delay.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nemodiff_jax as nd
from nemodiff_jax import cli

from .test_cli import REPO, assert_one_line_error, env, model_dir, nemodiff  # noqa: F401  (fixtures)

DRIVER = """
import importlib, sys, time
module, owner_path, name, marker = sys.argv[1:5]
owner = importlib.import_module(module)
for part in filter(None, owner_path.split('.')):
    owner = getattr(owner, part)
real = getattr(owner, name)

def slow(*a, **k):
    out = real(*a, **k)
    print(marker, file=sys.stderr, flush=True)
    time.sleep(0.5)
    return out

setattr(owner, name, slow)
sys.argv = ['nemodiff', *sys.argv[5:]]
from nemodiff_jax.cli import main
main()
"""


def interrupted(env, hook: tuple[str, str, str], args, sig=signal.SIGINT, timeout=300):
    """Run ``nemodiff ARGS`` with ``hook`` (module, owner, function) announcing each call; send
    ``sig`` after the first. Returns (exit status, stderr, stdout)."""
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, *hook, "@@HOOK@@", *map(str, args)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "@@HOOK@@" in line:
            break
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, "".join(seen) + err, out


def leftovers(*dirs: Path) -> list[str]:
    return sorted(p.name for d in dirs if d.is_dir() for p in d.iterdir()
                  if ".partial-" in p.name or ".tmp-" in p.name or ".old-" in p.name or "orbax-checkpoint-tmp" in p.name)


@pytest.fixture(scope="module")
def short_tasks(tmp_path_factory) -> Path:
    """Six prompts under 16 tokens: with batch 1 and 16 new tokens the decodes have test_cli's
    shapes, so its persistent compilation cache serves them."""
    path = tmp_path_factory.mktemp("tasks") / "short.jsonl"
    path.write_text("".join(json.dumps({"prompt_ids": [1, 5 + i, 9], "answer": "x"}) + "\n" for i in range(6)))
    return path


@pytest.fixture(scope="module")
def twenty_short_tasks(tmp_path_factory) -> Path:
    """Twenty such prompts: eval runs calls of 8 x batch_size prompts, so batch 1 makes three calls."""
    path = tmp_path_factory.mktemp("tasks20") / "short20.jsonl"
    path.write_text("".join(json.dumps({"prompt_ids": [1, 5 + i, 9], "answer": "x"}) + "\n" for i in range(20)))
    return path


SHAPES = ["--batch-size", "1", "--max-new-tokens", "16", "--no-warmup", "--no-progress"]


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ---------------------------------------------------------------------- interrupts
def test_eval_sigint_keeps_finished_rows(env, model_dir, twenty_short_tasks, tmp_path):
    out = tmp_path / "eval"
    rc, err, _ = interrupted(env, ("nemodiff_jax.eval.runner", "", "generate"),
                             ["eval", "--model", model_dir, "--tasks", twenty_short_tasks, "--n", "0", "--modes", "ar",
                              "--top-k", "99999999999", *SHAPES, "--out", out])  # top-k >= vocab: kept, no traceback
    assert rc == 130, err  # not -11 (SIGSEGV) and not a traceback
    assert "Traceback" not in err and "interrupted by SIGINT; partial results in" in err
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["partial"] is True and 1 <= len(res["samples"]) < 20
    assert len(res["samples"]) % 8 == 0  # whole calls (8 prompts through the one slot) are kept
    assert len((out / "samples.jsonl").read_text().splitlines()) == len(res["samples"])
    assert leftovers(out) == []


def test_sweep_sigterm_keeps_finished_rows(env, model_dir, short_tasks, tmp_path):
    out = tmp_path / "sweep"
    rc, err, _ = interrupted(env, ("nemodiff_jax.eval.sweep", "", "_diffusion_rows"),
                             ["sweep", "--model", model_dir, "--tasks", short_tasks, "--n", "0", "--policies",
                              "threshold", "--thresholds", "0.9", "--block-lengths", "8", "--baselines", "",
                              *SHAPES, "--out", out], sig=signal.SIGTERM)
    assert rc == 130, err
    assert "interrupted by SIGTERM; partial results in" in err and "Traceback" not in err
    res = json.loads((out / "sweep.json").read_text())
    assert res["config"]["partial"] is True
    (row,) = res["rows"]
    assert row["partial"] is True and 1 <= row["n"] < 6
    assert leftovers(out) == []


def test_train_sigint_checkpoints_finished_steps(env, tmp_path):
    out = tmp_path / "train"
    (out / "ckpt" / "7.orbax-checkpoint-tmp-1").mkdir(parents=True)  # a killed run's unfinished save
    config = {"model": {"preset": "tiny", "num_layers": 1, "hidden_size": 32, "intermediate_size": 64,
                        "num_heads": 2, "num_kv_heads": 1, "head_dim": 16, "vocab_size": 64},
              "data": {"kind": "random", "vocab_size": 64}, "batch_size": 2, "seq_len": 16, "steps": 1000,
              "ckpt_every": 1000, "log_every": 1, "optim": {"warmup_steps": 1}, "out_dir": str(out)}
    (tmp_path / "train.json").write_text(json.dumps(config))
    rc, err, _ = interrupted(env, ("nemodiff_jax.train.loop", "", "prefetch"),
                             ["train", "--config", tmp_path / "train.json", "--no-progress"])
    # prefetch is a generator: the hook fires once the loop has its iterator, before step 1
    assert rc == 130, err
    assert "interrupted by SIGINT; partial results in" in err and "rerun to resume" in err
    steps = sorted(int(p.name) for p in (out / "ckpt").iterdir() if p.name.isdigit())
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 1 and 1 <= steps[0] < 1000
    assert events[-1] == {"event": "interrupted", "step": steps[0]}
    assert leftovers(out, out / "ckpt") == []


def test_generate_sigint_exits_130_in_one_line(env, model_dir):
    rc, err, _ = interrupted(env, ("nemodiff_jax.cli.generate", "", "load_model"),
                             ["generate", "--model", model_dir, "--prompt", "hi", "--mode", "ar"])
    lines = [line for line in err.splitlines() if line.strip() and "@@HOOK@@" not in line]
    assert rc == 130 and lines == ["nemodiff: interrupted by SIGINT"], err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_convert_interrupted_leaves_nothing(env, model_dir, tmp_path, sig):
    out = tmp_path / "jax"
    rc, err, _ = interrupted(env, ("nemodiff_jax.io.sources", "TensorSource", "get"),
                             ["convert", model_dir, out, "--quiet"], sig=sig)
    assert rc == 130, err
    lines = [line for line in err.splitlines() if line.strip() and "@@HOOK@@" not in line]
    assert len(lines) == 1 and "interrupted by" in lines[0] and "nothing was written" in lines[0], err
    assert not out.exists() and leftovers(tmp_path) == []


def test_killed_conversion_is_cleaned_by_the_next(env, model_dir, tmp_path):
    from convert_weights.convert import convert_hf

    out = tmp_path / "jax"
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, "nemodiff_jax.io.sources", "TensorSource", "get",
                             "@@HOOK@@", "convert", str(model_dir), str(out), "--quiet"], env=env, cwd=REPO,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "@@HOOK@@" in line:
            break
    proc.kill()
    proc.wait()
    assert leftovers(tmp_path) == [f".jax.partial-{proc.pid}"]  # SIGKILL: nothing can clean up ...
    other = tmp_path / f".other.partial-{dead_pid()}"
    other.mkdir()
    mine_alive = tmp_path / f".jax.partial-{os.getppid()}"  # a live writer's directory is not touched
    mine_alive.mkdir()
    convert_hf(model_dir, out, progress=False)  # ... so the next conversion into OUT does
    assert leftovers(tmp_path) == sorted([other.name, mine_alive.name]) and (out / "params").is_dir()


# ---------------------------------------------------------------------- one error style
def test_closed_stdin_is_one_line(env, model_dir):
    for args in (["generate", "--model", model_dir, "--prompt", "-"], ["chat", "--model", model_dir]):
        r = subprocess.run([sys.executable, "-m", "nemodiff_jax", *map(str, args)], capture_output=True, text=True,
                           env=env, cwd=REPO, preexec_fn=lambda: os.close(0), timeout=120)
        assert r.returncode == 2, r.stderr
        assert_one_line_error(r.stderr, "standard input", "closed")


@pytest.mark.parametrize("args,needles", [
    (["sweep", "--thresholds", "0.5,1.5"], ["thresholds must be in [0, 1]", "1.5"]),
    (["sweep", "--temperatures", "-1"], ["temperatures must be finite numbers >= 0"]),
    (["sweep", "--block-lengths", "0"], ["block lengths must be integers >= 1"]),
    (["sweep", "--policies", "bogus"], ["bogus"]),
    (["oracle", "--block-length", "0"], ["block length must be an integer >= 1"]),
    (["oracle", "--budget", "-1"], ["budget must be an integer >= 1"]),
    (["oracle", "--beam", "0"], ["beam must be an integer >= 1"]),
    (["eval", "--batch-size", "x"], ["--batch-size", "invalid int"]),
    (["train", "--config"], ["--config", "expected one argument"]),
])
def test_meaningless_knobs_are_refused_before_loading(args, needles, capsys):
    assert cli.main([*args, "--model", "/nonexistent/never/loaded"]) == 2
    assert_one_line_error(capsys.readouterr().err, *needles)


def test_out_that_is_a_file_or_unwritable(tmp_path, capsys):
    afile = tmp_path / "taken"
    afile.write_text("x")
    for out, needle in ((afile, "exists and is not a directory"), (Path("/proc/nemodiff-out"), "not writable")):
        for cmd in (["eval", "--out", out], ["sweep", "--out", out], ["oracle", "--out", out]):
            assert cli.main([*map(str, cmd), "--model", "/nonexistent"]) == 2
            assert_one_line_error(capsys.readouterr().err, str(out), needle)
    cfg = tmp_path / "t.json"
    cfg.write_text(json.dumps({"model": "tiny", "out_dir": str(afile)}))
    assert cli.main(["train", "--config", str(cfg)]) == 2
    assert_one_line_error(capsys.readouterr().err, "out_dir", "exists and is not a directory")


@pytest.mark.parametrize("config,needles", [
    ({"steps": "two"}, ["train config field 'steps' must be an integer, got str 'two'"]),
    ({"steps": -3}, ["steps must be >= 1, got -3"]),
    ({"batch_size": 0}, ["batch_size must be >= 1, got 0"]),
    ({"optim": {"lr": "fast"}}, ["section 'optim'", "'lr' must be a number, got str 'fast'"]),
    ({"optim": {"learning_rate": 1e-3}}, ["unknown key 'learning_rate'", "'optim'"]),
    ({"data": {"tasks": "reverse"}}, ["'tasks' must be a list of strings"]),
    ({"model": {"preset": "tiny", "num_layers": "4"}}, ["config field 'num_layers' must be an integer"]),
    ({"model": {"preset": "tiny", "mask_token_id": 5000}}, ["mask_token_id (5000) lies outside the vocabulary"]),
    ({"mode": "warp"}, ["'mode' must be 'joint' or 'draft_lora'"]),
    ([1, 2], ["must hold a JSON object"]),
])
def test_train_config_errors(config, needles, tmp_path, capsys):
    path = tmp_path / "train.json"
    base = {"model": "tiny", "out_dir": str(tmp_path / "run")}
    path.write_text(json.dumps({**base, **config} if isinstance(config, dict) else config))
    assert cli.main(["train", "--config", str(path)]) == 2
    assert_one_line_error(capsys.readouterr().err, *needles)
    assert not (tmp_path / "run").exists()


def test_prefetch_hands_a_data_error_to_the_loop():
    from nemodiff_jax.train.data import BatchSource, prefetch

    class Broken(BatchSource):
        def __init__(self):
            pass

        def batch(self, step):
            raise ValueError("no rows")

    with pytest.raises(ValueError, match="no rows"):  # used to hang: the thread died, the loop waited
        list(prefetch(Broken(), range(3)))


def test_generate_cli_seed_and_temperature(model_dir, capsys):
    base = ["generate", "--model", str(model_dir), "--prompt", "hi", "--mode", "ar", "--max-new-tokens", "4"]
    assert cli.main([*base, "--seed", str(2**70)]) == 2
    assert_one_line_error(capsys.readouterr().err, "seed must lie in")
    assert cli.main([*base, "--temperature", "nan"]) == 2
    assert_one_line_error(capsys.readouterr().err, "temperature must be a finite number")
    # --top-k 99999999999 runs (keeps every token): test_eval_sigint_keeps_finished_rows passes it


# ---------------------------------------------------------------------- bad checkpoints
def _copy(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst))


def test_bad_model_paths_and_configs(model_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert cli.main(["generate", "--model", str(tmp_path / "file"), "--prompt", "hi"]) == 2
    assert_one_line_error(capsys.readouterr().err, "is a file, not a model directory")
    bad = _copy(model_dir, tmp_path / "bad")
    for text, needle in (('{"vocab_size": "big"}', "'vocab_size' must be an integer, got str"),
                         ("[]", "must hold a JSON object")):
        d = json.loads((model_dir / "config.json").read_text())
        (bad / "config.json").write_text(json.dumps({**d, **json.loads(text)}) if text.startswith("{") else text)
        assert cli.main(["generate", "--model", str(bad), "--prompt", "hi"]) == 2
        assert_one_line_error(capsys.readouterr().err, needle)


def test_corrupt_file_without_index_lists_no_missing_keys(model_dir, tmp_path, capsys):
    bad = _copy(model_dir, tmp_path / "bad")
    (bad / "model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes()[:1000])
    assert cli.main(["generate", "--model", str(bad), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert_one_line_error(err, "1 problem(s)", "truncated or corrupt safetensors")
    assert "missing key" not in err


def test_non_finite_weights_refused_by_load_and_convert(model_dir, tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    from convert_weights.__main__ import main as convert_main

    bad = _copy(model_dir, tmp_path / "nan")
    sd = load_file(str(bad / "model.safetensors"))
    sd["encoder.layers.0.mlp.down_proj.weight"][3, 5] = np.nan
    sd["encoder.norm.weight"][0] = np.inf
    save_file(sd, str(bad / "model.safetensors"))
    with pytest.raises(ValueError, match=r"non-finite weights: encoder.layers.0.mlp.down_proj.weight holds 1"):
        nd.load(bad)
    assert cli.main(["generate", "--model", str(bad), "--prompt", "hi"]) == 2
    assert_one_line_error(capsys.readouterr().err, "non-finite weights: encoder.layers.0.mlp.down_proj.weight")
    assert convert_main([str(bad), str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "non-finite weights: encoder.layers.0.mlp.down_proj.weight" in err
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    assert convert_main([str(tmp_path / "nowhere"), str(tmp_path / "out2")]) == 2  # exit 2, like every command


def test_tampered_chunks_refused_at_load(model_dir, tmp_path):
    from convert_weights.convert import convert_hf

    out = convert_hf(model_dir, tmp_path / "jax", progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["chunks"] and all(r["path"].startswith("params/") for r in manifest["chunks"])
    nd.load(out)  # untouched: loads
    biggest = max((out / r["path"] for r in manifest["chunks"]), key=lambda p: p.stat().st_size)
    biggest.write_bytes(b"\0" * biggest.stat().st_size)  # same size, zeros
    with pytest.raises(ValueError, match="does not match its sha256 in manifest.json"):
        nd.load(out)


def test_verify_fails_on_non_finite_logits():
    from convert_weights.verify import VerifyError, check_logits

    want = np.ones((2, 3, 4), np.float32)
    assert check_logits("causal", want + 1e-6, want, 1e-4, "float32") < 1e-4
    for got in (np.full_like(want, np.nan), np.where(np.eye(4, dtype=bool)[None, :3], np.inf, want)):
        with pytest.raises(VerifyError, match="NaN/Inf"):
            check_logits("causal", got, want, 1e-4, "float32")
    with pytest.raises(VerifyError, match="NaN/Inf"):
        check_logits("causal", want, np.full_like(want, np.nan), 1e-4, "float32")
