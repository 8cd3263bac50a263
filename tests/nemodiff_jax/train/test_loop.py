"""A few steps of a tiny config: the loss falls, resume is exact, export round-trips."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from nemodiff_jax.train.loop import config_from_dict, train

TINY = {
    "model": {"preset": "tiny", "vocab_size": 2048, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1,
              "num_heads": 2, "num_kv_heads": 1, "head_dim": 16, "block_size": 16, "lora_rank": 4, "lora_alpha": 8.0},
    "objective": {"diff_weight": 0.3},
    "optim": {"lr": 0.01, "warmup_steps": 1, "schedule": "cosine"},
    "data": {"kind": "tasks", "task_fraction": 0.75},
    "batch_size": 4, "seq_len": 80, "steps": 4, "ckpt_every": 2, "log_every": 1, "progress": False,
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    full_cfg = config_from_dict({**TINY, "out_dir": str(root / "full")})
    full = train(full_cfg)
    part_cfg = config_from_dict({**TINY, "out_dir": str(root / "part")})
    stopped = train(part_cfg, stop_after=2)
    resumed = train(part_cfg)  # a new call restores step 2 from orbax and goes on
    return root, full_cfg, full, stopped, resumed


def _records(path):
    return [r for r in map(json.loads, open(path)) if "step" in r]


def test_loss_falls(runs):
    root, *_ = runs
    recs = _records(root / "full" / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert recs[-1]["ar_loss"] < recs[0]["ar_loss"] - 0.2
    assert all(np.isfinite(r["loss"]) for r in recs)


def test_resume_is_bitwise_exact(runs):
    _, _, full, stopped, resumed = runs
    assert int(stopped["step"]) == 2 and int(resumed["step"]) == 4 and int(full["step"]) == 4
    leaves_f, leaves_r = jax.tree.leaves(full["params"]), jax.tree.leaves(resumed["params"])
    assert len(leaves_f) == len(leaves_r)
    for a, b in zip(leaves_f, leaves_r):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(full["opt_state"]), jax.tree.leaves(resumed["opt_state"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # and the stopped run really differs from the finished one
    assert not np.array_equal(np.asarray(stopped["params"]["embed_tokens"]), np.asarray(full["params"]["embed_tokens"]))


def test_export_loads_back(runs, tmp_path):
    from nemodiff_jax import load
    from nemodiff_jax.train.export import export_hf

    _, cfg, full, _, _ = runs
    d = export_hf(tmp_path / "m", cfg.model, jax.tree.map(np.asarray, full["params"]))
    assert (d / "tokenizer.json").is_file()
    m = load(d, dtype="float32")
    for a, b in zip(jax.tree.leaves(full["params"]), jax.tree.leaves(m.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_init_from_drops_the_draft_lora(tmp_path):
    """Fine-tuning a model that ships a draft LoRA: the state has init_params' structure (so
    checkpoints restore) and the base weights of the model, the LoRA left out."""
    from nemodiff_jax.model.forward import init_params
    from nemodiff_jax.train.export import export_hf
    from nemodiff_jax.train.loop import initial_state
    from nemodiff_jax.train.lora import ensure_lora
    from nemodiff_jax.train.optim import make_optimizer

    cfg = config_from_dict({**TINY, "out_dir": str(tmp_path / "r")})
    base = init_params(cfg.model, 3)
    with_lora = ensure_lora(cfg.model, base, seed=1)
    assert "lora_a" in with_lora["layers"]["self_attn"]
    d = export_hf(tmp_path / "m", cfg.model, jax.tree.map(np.asarray, with_lora))
    no_model = {k: v for k, v in TINY.items() if k != "model"}
    tc = config_from_dict({**no_model, "init_from": str(d), "out_dir": str(tmp_path / "r")})
    assert tc.model.lora_rank == 0  # config.json carries no LoRA; the adapter does
    state = initial_state(tc, make_optimizer(tc.optim, tc.steps))
    template = init_params(tc.model, 0)
    assert jax.tree.structure(state["params"]) == jax.tree.structure(template)
    sa = {k: v for k, v in base["layers"]["self_attn"].items() if k not in ("lora_a", "lora_b")}
    expected = {**base, "layers": {**base["layers"], "self_attn": sa}}
    for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
