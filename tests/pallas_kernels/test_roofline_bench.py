"""The cost model against hand arithmetic, and the benchmark entry point end to end (tiny, CPU)."""

from __future__ import annotations

import pytest

from pallas_kernels import bench, roofline


def test_window_cost_by_hand():
    # 8B, batch 1, 4096 cached + a bidirectional block of 32: every query sees 4128 keys.
    c = roofline.window_cost(1, 32, 4096)
    assert c.flops == 4 * 32 * 32 * 4128 * 128
    kv = 2 * 8 * 4128 * 128 * 2
    qo = 2 * 32 * 32 * 128 * 2
    assert c.ideal_bytes == kv + qo
    assert c.bound == "memory"  # ~124 FLOP/byte, below the H100 ridge (~295)
    assert c.ideal_s == pytest.approx((kv + qo) / 3.35e12)
    assert c.kernel_bytes >= c.ideal_bytes
    # Causal: the window is a triangle.
    causal = roofline.window_cost(1, 32, 4096, bidirectional=False)
    assert causal.flops == 4 * 32 * (32 * 4096 + 32 * 33 // 2) * 128


def test_markdown_table_shape():
    table = roofline.markdown_table().splitlines()
    assert len(table) == 2 + 4  # header, rule, batch {1, 16} x context {4k, 32k}
    assert all(line.count("|") == table[0].count("|") for line in table)


def test_bench_main_runs(capsys):
    assert bench.main(["--batch", "1", "--queries", "4", "--context", "20", "--iters", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| window")]
    assert len(rows) == 1
    assert float(rows[0].split("|")[-3]) < 1e-5  # max abs diff vs xla_attention, fp32


def test_policy_cost_counts_visible_pairs():
    import jax.numpy as jnp

    from nemodiff_jax.model import masks

    # Causal window of 4 after 2 cached keys: 4 * 2 prefix pairs + 1 + 2 + 3 + 4 window pairs.
    c = roofline.policy_cost(masks.causal(jnp.array([2]), 4), 4, 8, q_heads=1, kv_heads=1, head_dim=1, itemsize=1)
    assert c.flops == 4 * (8 + 10)
    assert c.ideal_bytes == 2 * 4 + 2 * 6  # q + out, K and V up to the last visible key (slot 5)
