"""Issue 17, in process: bad knobs, bad ids, bad seeds and bad config.json fields raise one
ValueError that names the problem (the CLI turns it into one line and exit status 2), and
non-finite weights never load. Subprocess cases (interrupts, exit codes) are in
``test_reliability_cli.py``."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest

import nemodiff_jax as nd
from nemodiff_jax.model.config import NLDConfig, config_from_hf_dict

GEN = __import__("importlib").import_module("nemodiff_jax.decode.generate")
TINY = NLDConfig.preset("tiny").replace(num_layers=1, hidden_size=32, intermediate_size=64, num_heads=2,
                                        num_kv_heads=1, head_dim=16, vocab_size=64, max_position_embeddings=256)


@pytest.fixture(scope="module")
def model():
    return nd.Model(TINY, None)  # every check below runs before the parameters are touched


# ---------------------------------------------------------------------- generate's arguments
@pytest.mark.parametrize("kw,needle", [
    (dict(temperature=math.inf), "temperature must be a finite number"),
    (dict(temperature=math.nan), "temperature must be a finite number"),
    (dict(threshold=math.nan, mode="diffusion", max_new_tokens=8), "threshold"),
    (dict(top_p=math.nan), "top_p"),
    (dict(top_k=True), "top_k"),
    (dict(seed=2**70), r"seed must lie in \[-2\*\*31, 2\*\*64\)"),
    (dict(seed=True), "seed must be an int"),
    (dict(max_thinking_tokens=2**40, end_think_token_id=2), "max_thinking_tokens"),
    (dict(mode="diffusion", max_new_tokens=8, policy_params={"gamma": math.nan}), "gamma"),
])
def test_generate_rejects_bad_knobs(model, kw, needle):
    with pytest.raises(ValueError, match=needle):
        nd.generate(model, [[1, 2, 3]], **kw)


@pytest.mark.parametrize("prompts,needle", [
    ([[1.7, 2.0]], "must be integers"),
    ([1.0, 2.0], "must be integers"),
    ([[True, 2]], "must be integers"),
    (np.zeros((1, 3), bool), "integer"),
])
def test_generate_rejects_float_and_bool_ids(model, prompts, needle):
    with pytest.raises(ValueError, match=needle):
        nd.generate(model, prompts)


def test_seeds_keep_all_64_bits():
    data = lambda k: np.asarray(jax.random.key_data(k)).tolist()  # noqa: E731
    one = [data(GEN._keys(s, 1)) for s in (0, 2**32, 2**40, 2**64 - 1)]
    assert len({str(k) for k in one}) == 4
    assert data(GEN._keys(7, 1)) == data(jax.random.key(7))  # 32-bit seeds are what they always were
    rows = data(GEN._keys([0, 2**32, 2**40], 3))
    assert len({str(r) for r in rows}) == 3 and rows[0] == data(jax.random.key(0))


def test_forward_logits_lora_without_a_lora(model):
    with pytest.raises(ValueError, match="no draft LoRA"):
        nd.forward_logits(model, np.ones((1, 3), np.int32), lora=True)
    with pytest.raises(ValueError, match="integer"):
        nd.forward_logits(model, np.ones((1, 3), bool))


# ---------------------------------------------------------------------- config.json
@pytest.mark.parametrize("change,needle", [
    (dict(vocab_size="many"), "config.json field 'vocab_size' must be an integer, got str"),
    (dict(hidden_size=64.5), "'hidden_size' must be an integer"),
    (dict(num_hidden_layers=True), "'num_hidden_layers' must be an integer, got bool"),
    (dict(rms_norm_eps="tiny"), "'rms_norm_eps' must be a number"),
    (dict(rope_parameters=[1]), "'rope_parameters' must be an object"),
    (dict(rope_parameters={"rope_type": "yarn", "rope_theta": "big"}), "'rope_parameters.rope_theta' must be a number"),
    (dict(torch_dtype=16), "'torch_dtype' must be a string"),
    (dict(eos_token_id="eos"), "'eos_token_id' must be an integer or a list of integers"),
    (dict(mask_token_id=64), r"mask_token_id \(64\) lies outside the vocabulary \[0, 64\)"),
    (dict(eos_token_id=-1), "eos_token_id"),
    (dict(eos_token_id=[2, 99]), r"eos_token_id \(99\)"),
    (dict(bos_token_id=1000), "bos_token_id"),
    (dict(pad_token_id=64), "pad_token_id"),
    (dict(num_attention_heads=0), "must be >= 1"),
])
def test_config_json_fields(change, needle):
    d = {**TINY.to_hf_dict(), **change}
    with pytest.raises(ValueError, match=needle):
        config_from_hf_dict(d)


def test_config_json_not_an_object(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        NLDConfig.from_hf(tmp_path)
    (tmp_path / "config.json").write_text("{nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        NLDConfig.from_hf(tmp_path)


def test_load_reports_a_file_as_a_file(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file, not a model directory"):
        nd.load(tmp_path / "weights.bin")


def test_result_json_is_strict():
    from nemodiff_jax.cli.generate import finite_json

    text = json.dumps(finite_json({"a": [math.nan, 1.0, {"b": math.inf}]}), allow_nan=False)
    assert json.loads(text) == {"a": [None, 1.0, {"b": None}]}


# ---------------------------------------------------------------------- partial files
def test_stale_partial_files_of_dead_writers_are_removed(tmp_path):
    import os
    import subprocess
    import sys

    from nemodiff_jax import guard

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    out = tmp_path / "eval"
    out.mkdir()
    stale = [out / f".results.json.tmp-{p.pid}", out / f".samples.jsonl.partial-{p.pid}"]
    stale[0].write_text("{")
    stale[1].mkdir()
    live = out / f".metrics.csv.tmp-{os.getpid()}"
    live.write_text("")
    unrelated = out / ".hidden-1"
    unrelated.write_text("")
    guard.writable_dir(out)  # what eval, sweep and oracle call on --out before they start
    assert not any(s.exists() for s in stale) and live.exists() and unrelated.exists()
    guard.atomic_write_text(out / "results.json", "{}\n")
    assert sorted(x.name for x in out.iterdir()) == sorted([live.name, unrelated.name, "results.json"])
