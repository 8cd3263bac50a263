"""The torch twin decodes what our engine decodes (shipped model, held-out prompts, greedy), and the
decode benchmark harness reports every side."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import nemodiff_jax as nd  # noqa: E402
from nemodiff_jax.eval import bench_decode, torch_twin  # noqa: E402

N_NEW, BLOCK = 64, 32


@pytest.fixture(scope="module")
def model():
    return nd.load("embedded")


@pytest.fixture(scope="module")
def twin(model):
    return torch_twin.twin_from_model(model)


@pytest.fixture(scope="module")
def prompts(model):
    return bench_decode.held_out_prompts(model, 3)


def test_twin_forward_matches_ours(model, twin):
    import torch

    ids = np.random.default_rng(0).integers(4, model.config.vocab_size, (1, 30))
    with torch.no_grad():
        causal = twin(input_ids=torch.as_tensor(ids)).logits.numpy()
        bidir = twin(input_ids=torch.as_tensor(ids), attention_mask=torch.ones((1, 1, 30, 30), dtype=torch.bool)).logits
    assert np.abs(np.asarray(nd.forward_logits(model, ids, mode="causal")) - causal).max() < 1e-4
    assert np.abs(np.asarray(nd.forward_logits(model, ids, mode="bidirectional")) - bidir.numpy()).max() < 1e-4


def test_twin_decodes_what_we_decode(model, twin, prompts):
    cfg = model.config
    eos, mask = cfg.eos_token_id, cfg.mask_token_id
    for p in prompts:
        ar, ar_f = torch_twin.twin_ar(twin, p, N_NEW, eos)
        hf, hf_f = torch_twin.hf_generate(twin, p, N_NEW, eos)
        ls, ls_f = torch_twin.twin_linear_spec(twin, p, N_NEW, BLOCK, mask, eos)
        fu, fu_f = torch_twin.twin_linear_spec(twin, p, N_NEW, BLOCK, mask, eos, fused=True)
        ours_ar = nd.generate(model, [p], mode="ar", max_new_tokens=N_NEW)
        ours_ls = nd.generate(model, [p], mode="linear_spec", max_new_tokens=N_NEW, block_length=BLOCK, lora=False)
        assert ar == ours_ar.tokens[0] == hf
        assert ls == fu == ar == ours_ls.tokens[0]  # lossless at T = 0
        # Same NFE conventions: AR one forward per token; linear_spec the prefill + 2 per cycle,
        # ours (and the fused twin) one fewer: the first cycle's draft is inside the prefill.
        assert ar_f == hf_f == ours_ar.nfe[0] == len(ar)
        assert ls_f == fu_f + 1 == ours_ls.nfe[0] + 1 and ls_f % 2 == 1


def test_bench_smoke(model, tmp_path):
    # batch_prompts=1: the "slots" sides reuse the batch-1 programs, so the smoke compiles each mode once.
    out = tmp_path / "bench.json"
    res = bench_decode.run_decode_bench(model=model, n_prompts=2, max_new_tokens=8, block_length=8, repeats=1,
                                        slots=1, batch_prompts=1, out=out)
    assert set(res["sides"]) == set(bench_decode.SIDES)
    for s, e in res["sides"].items():
        assert e["tokens"] > 0 and e["forwards"] > 0 and e["tok_per_s"] > 0 and e["tpf"] > 0, s
        assert e["timed_compiles"] == 0, s
    # the lossless sides decode exactly what our AR decodes
    for s in ("linear_spec/1", "linear_spec+lora/1", "ar_per_layer/1", "linear_spec+lora_per_layer/1", "twin_ar/1", "twin_linear_spec/1", "twin_linear_spec_fused/1",
              "hf_generate/1"):
        assert res["sides"][s]["identical_to_ar"] == 1.0, s
    assert {r["name"] for r in res["ratios"]} == {r[0] for r in bench_decode.RATIOS}
    assert set(res["forward_ms"]) == {"1", "8", "step"} and min(res["forward_ms"].values()) > 0
    sol, side = res["speed_of_light"], res["sides"]["linear_spec+lora/1"]
    cycles = side["forwards"] / 2  # threshold 0: a draft and a verify per cycle (the first draft in the prefill)
    assert sol["tokens_per_cycle"] == pytest.approx((side["tokens"] - side["prompts"]) / cycles)
    assert sol["t_step_ms"] == res["forward_ms"]["step"] and sol["t_block_ms"] == res["forward_ms"]["8"]
    assert sol["bound"] == pytest.approx(sol["t_step_ms"] * sol["tokens_per_cycle"] / (2 * sol["t_block_ms"]))
    table = bench_decode.format_table(res)
    for s in bench_decode.SIDES:
        assert f"| {s} |" in table
    assert json.loads(out.read_text())["sides"].keys() == res["sides"].keys()
    assert res["settings"]["round_orders"] == bench_decode.round_orders(bench_decode.SIDES, 1)


def test_bench_decode_cli(tmp_path, capsys):
    from nemodiff_jax.cli import main

    md, js = tmp_path / "b.md", tmp_path / "new" / "b.json"  # --out's folder is made
    rc = main(["bench", "decode", "--sides", "ar/1,twin_ar/1", "--prompts", "1", "--batch-prompts", "1",
               "--slots", "1", "--max-new-tokens", "8", "--repeats", "1", "--quiet", "--markdown", str(md),
               "--out", str(js)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| ar/1 |" in printed and "| twin_ar/1 |" in printed and "our AR / twin AR" in printed
    assert "Batch-1 forward alone" not in printed  # no linear_spec+lora side: no bound to state
    assert md.read_text().strip() == printed.strip()
    assert set(json.loads(js.read_text())["sides"]) == {"ar/1", "twin_ar/1"}
    umask = os.umask(0)
    os.umask(umask)
    assert (js.stat().st_mode & 0o777) == (0o666 & ~umask)  # a normal file, not mkstemp's 0600
    assert sorted(p.name for p in js.parent.iterdir()) == ["b.json"]  # no temporary left behind
    assert main(["bench", "decode", "--sides", "ar/1,nope"]) == 2
    assert "--sides: unknown ['nope']" in capsys.readouterr().err
    assert main(["bench", "decode", "--repeats", "0"]) == 2


def test_paired_round_ratios_are_the_per_round_tok_s_ratios():
    num = {"tokens": 30, "walls": [0.10, 0.30, 0.20, 0.25]}
    den = {"tokens": 20, "walls": [0.40, 0.30, 0.10, 0.50]}
    per = sorted((30 / a) / (20 / b) for a, b in zip(num["walls"], den["walls"]))  # 6.0, 1.5, 0.75, 3.0
    got = bench_decode.paired(num, den)
    assert got["round_min"] == pytest.approx(0.75) and got["round_max"] == pytest.approx(6.0)
    assert got["round_median"] == pytest.approx((per[1] + per[2]) / 2) == pytest.approx(2.25)
    odd = bench_decode.paired({"tokens": 1, "walls": [1.0, 2.0, 4.0]}, {"tokens": 1, "walls": [1.0, 1.0, 1.0]})
    assert odd["round_median"] == pytest.approx(0.5)
    assert bench_decode.paired({"tokens": 1, "walls": []}, {"tokens": 1, "walls": []}) == {}


def test_round_orders_shuffle_the_neighbours():
    """Every round runs every side once, the same orders on every run, and no side follows the
    same neighbour in every round (in one fixed order a heavy side slowed its successor each time)."""
    orders = bench_decode.round_orders(bench_decode.SIDES, 5)
    assert orders == bench_decode.round_orders(bench_decode.SIDES, 5)
    assert len(orders) == 5 and all(sorted(o) == sorted(bench_decode.SIDES) for o in orders)
    assert len({tuple(o) for o in orders}) == 5
    for side in bench_decode.SIDES:
        after = {o[o.index(side) + 1] if o.index(side) + 1 < len(o) else None for o in orders}
        assert len(after) > 1, side
