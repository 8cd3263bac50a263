"""Sharding over a ("data", "model") mesh: the rules table here, and decoding on 8 CPU host
devices in a subprocess (sharding_worker.py; XLA_FLAGS must be set before jax is imported,
and this process has imported it with one device). NEMODIFF_SLOW=1 runs every mode on every
mesh, with and without FSDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from nemodiff_jax import NLDConfig, abstract_params
from nemodiff_jax.model.sharding import FSDP_RULES, PARAM_AXES, RULES, leaf_axes, spec_for
from jax.sharding import PartitionSpec as P
from tests.subprocess_env import child_env

ROOT = Path(__file__).resolve().parents[3]


def test_rules_place_heads_mlp_vocab_on_model_and_batch_on_data():
    sizes = {"data": 2, "model": 4}
    assert spec_for((4096, 32, 128), ("embed", "heads", None), sizes) == P(None, "model")
    assert spec_for((14336, 4096), ("mlp", "embed"), sizes) == P("model")
    assert spec_for((131072, 4096), ("vocab", "embed"), sizes) == P("model")
    assert spec_for((16, 8, 4096, 128), ("batch", "kv_heads", None, None), sizes) == P("data", "model")
    assert spec_for((4096, 32, 128), ("embed", "heads", None), sizes, FSDP_RULES) == P("data", "model")


def test_kv_heads_replicate_where_the_model_axis_does_not_divide():
    assert spec_for((4096, 8, 128), ("embed", "kv_heads", None), {"data": 1, "model": 16}) == P()
    assert spec_for((3, 16), ("batch", None), {"data": 2, "model": 1}) == P()  # 3 rows on 2: replicated
    assert spec_for((8, 8), ("heads", "kv_heads"), {"data": 1, "model": 8}) == P("model")  # an axis once


def test_every_parameter_has_a_rule():
    cfg = NLDConfig.preset("tiny").replace(lora_rank=4, lora_alpha=8.0)
    flat = jax.tree_util.tree_flatten_with_path(abstract_params(cfg))[0]
    names = {".".join(str(k.key) for k in kp): leaf.ndim for kp, leaf in flat}
    assert set(names) == set(PARAM_AXES)
    for name, ndim in names.items():
        assert len(leaf_axes(name, ndim)) == ndim
    assert set(RULES) == set(FSDP_RULES)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from convert_weights.convert import convert_hf
    from nemodiff_jax.io.checkpoint import EMBEDDED_DIR

    converted = convert_hf(EMBEDDED_DIR, tmp_path_factory.mktemp("conv") / "embedded")
    plan = "full" if os.environ.get("NEMODIFF_SLOW") == "1" else "quick"
    env = child_env()
    proc = subprocess.run(
        [sys.executable, "-m", "tests.nemodiff_jax.model.sharding_worker", "--plan", plan, "--converted", str(converted)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("REPORT "))
    return json.loads(line[len("REPORT "):])


def test_sharded_decode_gives_the_same_tokens_in_every_mode(report):
    assert report["devices"] == 8
    meshes = {r["mesh"] for r in report["runs"]}
    assert meshes == {"1x8", "2x4", "8x1"}
    assert min(report["answer_lengths"]) > 10  # real answers, not an immediate EOS
    assert set(next(r for r in report["runs"] if r["mesh"] == "2x4")["same"]) == {"ar", "diffusion", "linear_spec", "quadratic_spec"}
    assert report["stream_same"]  # nd.stream on the 2x4 mesh ends with generate's tokens
    for run in report["runs"]:
        assert all(run["same"].values()), run["same"]
        assert run["logit_err"] < 1e-4, run


def test_weights_live_where_the_rules_say(report):
    runs = {(r["mesh"], r["fsdp"]): r for r in report["runs"]}
    r24 = runs[("2x4", False)]
    # embedded: 8 q heads, 4 kv heads, vocab 2048, hidden 192
    assert r24["shards"]["q_proj"] == [[4, 192, 2, 24]]
    assert r24["shards"]["k_proj"] == [[4, 192, 1, 24]]
    assert r24["shards"]["embed_tokens"] == [[512, 192]]
    r18 = runs[("1x8", False)]
    assert r18["shards"]["k_proj"] == [[4, 192, 4, 24]]  # 4 kv heads on 8: replicated
    assert r18["shards"]["q_proj"] == [[4, 192, 1, 24]]
    assert runs[("8x1", False)]["per_device_bytes"] == runs[("8x1", False)]["total_bytes"]
    fsdp = runs[("2x4", True)]
    assert fsdp["shards"]["q_proj"] == [[4, 96, 2, 24]]
    assert fsdp["per_device_bytes"] < r24["per_device_bytes"] < r24["total_bytes"]


def test_per_layer_weights_keep_their_sharding(report):
    per = report["per_layer"]
    assert per["same_ar"] and per["logit_err"] < 1e-4, per
    assert per["q_proj_shards"] == [[192, 2, 24]] and per["q_proj_spec"] == str(P(None, "model"))  # no layer axis


def test_converted_checkpoint_loads_into_its_sharding(report):
    conv = report["converted"]
    assert conv["equal"]
    assert conv["spec_q"] == str(P(None, None, "model"))
