"""Draft-LoRA training touches only the LoRA and lowers the draft loss on a fixed batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nemodiff_jax.model.forward import init_params
from nemodiff_jax.model.config import NLDConfig
from nemodiff_jax.train.data import BatchSource, DataConfig
from nemodiff_jax.train.lora import LoraConfig, draft_starts, train_draft_lora

CFG = NLDConfig(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
    max_position_embeddings=256, rope_type="default", rope_theta=10000.0, llama4_scaling_beta=0.0,
    mask_token_id=3, block_size=8, lora_rank=4, lora_alpha=16.0, dtype="float32",
)


class _Fixed(BatchSource):
    """The same random batch every step (so the loss must fall)."""

    def batch(self, step):
        return super().batch(0)


def test_draft_starts_inside_answer():
    lm = np.zeros((64, 20), np.int32)
    lm[:, 7:15] = 1
    s = np.asarray(draft_starts(jax.random.key(0), jnp.asarray(lm), 0.5))
    assert ((s >= 7) & (s < 15)).all() and (s == 7).mean() > 0.4


def test_lora_only_changes_lora(tmp_path):
    params = init_params(CFG, 0)
    lc = LoraConfig(steps=8, lr=0.02, warmup_steps=1, batch_size=4, seq_len=24, block=8, log_every=1)
    src = _Fixed(DataConfig(kind="random", vocab_size=64), 4, 24, seed=0)
    out = train_draft_lora(CFG, params, lc, src, tmp_path / "m.jsonl")
    import json

    recs = [json.loads(line) for line in open(tmp_path / "m.jsonl")]
    assert recs[-1]["draft_ce"] < recs[0]["draft_ce"]
    flat_in = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_out = dict(jax.tree_util.tree_flatten_with_path(out)[0])
    for path, leaf in flat_in:
        same = np.array_equal(np.asarray(leaf), np.asarray(flat_out[path]))
        is_lora = "lora" in jax.tree_util.keystr(path)
        assert same != is_lora or ("lora_a" in jax.tree_util.keystr(path)), jax.tree_util.keystr(path)
    assert not np.array_equal(np.asarray(params["layers"]["self_attn"]["lora_b"]),
                              np.asarray(out["layers"]["self_attn"]["lora_b"]))
