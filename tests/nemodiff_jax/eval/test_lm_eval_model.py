"""The lm-evaluation-harness model ``nemodiff``, offline: local YAML tasks over JSONL written here.

* ``generate_until`` on the shipped model in every mode through ``lm_eval.simple_evaluate``;
  the speculative modes give AR's responses and scores at temperature 0.
* stop strings, ``max_gen_toks`` and grouping by generation kwargs, against a brute-force cut
  of the uncut generation.
* ``loglikelihood`` and ``loglikelihood_rolling`` on a tiny random model against float64 sums
  over transformers' float64 logits of the same model (no padding, no buckets, windows built
  by hand), and no retrace for request lengths inside a length bucket.
* the CLI delegate writes the harness's results plus our telemetry, and ``nemodiff eval
  --from-harness`` reads them into our table and plot.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from nemodiff_jax.data import tasks as synth  # noqa: E402

MODES = ("ar", "diffusion", "linear_spec", "quadratic_spec")
BATCH = 4
MODE_ARGS = {"ar": {}, "diffusion": {"threshold": 0.9}, "linear_spec": {}, "quadratic_spec": {"block_length": 16}}


def _yaml(name: str, data: str, cache: str, body: str) -> str:
    return (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"  cache_dir: {cache}\ntest_split: test\n{body}")


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm_eval_tasks")
    rng = random.Random(0)
    gen = []
    for name in ("reverse", "sort", "zip", "repeat"):
        prompt, answer = synth.sample(name, "test", rng)
        gen.append(dict(prompt=prompt, answer=answer.replace(synth.EOS, "")))
    (d / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gen))
    # multiple choice: the right continuation against two corrupted ones
    mc = [dict(prompt=r["prompt"], choices=[r["answer"], r["answer"][::-1], " a a a"], label=0) for r in gen]
    (d / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc))
    cache = d / "hf_cache"
    (d / "nd_gen.yaml").write_text(_yaml("nd_gen", d / "gen.jsonl", cache, """output_type: generate_until
doc_to_text: "{{prompt}}"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["<eos>"]
  max_gen_toks: 48
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""))
    (d / "nd_mc.yaml").write_text(_yaml("nd_mc", d / "mc.jsonl", cache, """output_type: multiple_choice
doc_to_text: "{{prompt}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{label}}"
target_delimiter: ""
metric_list:
  - metric: acc
"""))
    (d / "nd_ppl.yaml").write_text(_yaml("nd_ppl", d / "gen.jsonl", cache, """output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{prompt}}{{answer}}"
metric_list:
  - metric: word_perplexity
"""))
    return d


@pytest.fixture(scope="module")
def embedded():
    import nemodiff_jax as nd

    return nd.load("embedded")


@pytest.fixture(scope="module", autouse=True)
def offline(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("HF_DATASETS_OFFLINE", "1")
    mp.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_datasets")))
    yield
    mp.undo()


def _run(lm, task_dir, tasks):
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(model=lm, tasks=list(tasks), log_samples=True,
                                   task_manager=TaskManager(include_path=str(task_dir), include_defaults=False))


@pytest.fixture(scope="module")
def harness_runs(embedded, task_dir):
    """The generate task once per mode: (results, responses, telemetry)."""
    from nemodiff_jax.eval.lm_eval_model import NemodiffLM

    out = {}
    for mode in MODES:
        lm = NemodiffLM(model=embedded, mode=mode, batch_size=BATCH, **MODE_ARGS[mode])
        res = _run(lm, task_dir, ["nd_gen"])
        resps = [s["resps"][0][0] for s in sorted(res["samples"]["nd_gen"], key=lambda s: s["doc_id"])]
        out[mode] = (res["results"]["nd_gen"], resps, lm.telemetry())
    return out


@pytest.mark.parametrize("mode", MODES)
def test_generate_until_every_mode(harness_runs, mode):
    """Each mode answers through the harness and reports our telemetry beside its metric."""
    results, resps, tel = harness_runs[mode]
    assert len(resps) == 4 and all(isinstance(r, str) and r for r in resps)
    assert 0.0 <= results["exact_match,none"] <= 1.0
    g = tel["generate_until"]
    assert g["n"] == 4 and g["nfe"] > 0 and g["tokens"] > 0
    assert g["tpf"] == pytest.approx(g["tokens"] / g["nfe"])
    assert sum(r["nfe"] for r in tel["requests"]) == g["nfe"]
    assert set(tel["per_task"]) == {"nd_gen"}
    if mode == "ar":
        assert g["tpf"] == 1.0 and results["exact_match,none"] == 1.0  # the shipped model solves these
    if mode in ("linear_spec", "quadratic_spec"):
        assert g["acceptance_length"] > 1 and g["tpf"] > 1


@pytest.mark.parametrize("mode", ("linear_spec", "quadratic_spec"))
def test_speculation_scores_equal_ar(harness_runs, mode):
    """Self-speculation is exact at temperature 0: same responses, same harness score as AR."""
    assert harness_runs[mode][1] == harness_runs["ar"][1]
    assert harness_runs[mode][0]["exact_match,none"] == harness_runs["ar"][0]["exact_match,none"]


def _gen_requests(prompts, kwargs_list):
    return [Instance("generate_until", {}, (p, kw), i, ("t", i, 1)) for i, (p, kw) in enumerate(zip(prompts, kwargs_list))]


def test_stop_strings_max_gen_toks_and_groups(embedded):
    """Cut at the first ``until`` string (brute force over every stop and offset), at most
    ``max_gen_toks`` tokens, and a mixed call equals its groups run separately."""
    from nemodiff_jax.eval.lm_eval_model import NemodiffLM

    lm = NemodiffLM(model=embedded, mode="ar", batch_size=BATCH)
    rng = random.Random(1)
    prompts = [synth.sample(t, "test", rng)[0] for t in ("reverse", "sort", "shift", "zip")]
    full = lm.generate_until(_gen_requests(prompts, [dict(until=[], max_gen_toks=48)] * 4))
    stops = [" 5", " z", "q"]
    cut = lm.generate_until(_gen_requests(prompts, [dict(until=stops, max_gen_toks=48)] * 4))
    for f, c in zip(full, cut):
        first = min([f.find(s) for s in stops if s in f] or [len(f)])
        assert c == f[:first]
    short = lm.generate_until(_gen_requests(prompts, [dict(until=[], max_gen_toks=5)] * 4))
    for f, s in zip(full, short):
        assert f.startswith(s) and 0 < len(embedded.tokenizer.encode(s)) <= 5
    mixed_kw = [dict(until=[], max_gen_toks=48), dict(until=[], max_gen_toks=5)] * 2
    mixed = lm.generate_until(_gen_requests(prompts, mixed_kw))
    assert mixed == [full[0], short[1], full[2], short[3]]
    # sampling: reproducible for a seed; greedy rows unchanged by a sampled neighbour
    hot = [dict(until=[], max_gen_toks=48, do_sample=True, temperature=1.5)] * 2 + [dict(until=[], max_gen_toks=48)] * 2
    a = lm.generate_until(_gen_requests(prompts, hot))
    b = lm.generate_until(_gen_requests(prompts, hot))
    assert a == b and a[2:] == full[2:]


@pytest.fixture(scope="module")
def tiny():
    """A tiny random model with the task tokenizer, and its transformers twin in float64."""
    pytest.importorskip("transformers")
    from nemodiff_jax.eval.lm_eval_model import _task_tokenizer
    from nemodiff_jax.eval.models import random_model
    from nemodiff_jax.eval.torch_twin import twin_from_model

    model = random_model("tiny", seed=3, head_scale=3.0)
    model = model.replace(tokenizer=_task_tokenizer(model.config))
    return model, twin_from_model(model, attn_implementation="eager").double()


def _logp64(twin, ids: list[int]) -> np.ndarray:
    """float64 log-softmax of transformers' float64 logits of one unpadded sequence."""
    import torch

    with torch.no_grad():
        z = twin(torch.tensor([ids])).logits[0].numpy().astype(np.float64)
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def _ll_ref(twin, ids: list[int], n_cont: int, mask_id: int) -> tuple[float, bool]:
    lp = _logp64(twin, ids[:-1])
    total, greedy = 0.0, True
    for pos in range(len(ids) - 1 - n_cont, len(ids) - 1):
        target = ids[pos + 1]
        total += lp[pos, target]
        row = lp[pos].copy()
        row[mask_id] = -np.inf
        greedy &= int(np.argmax(row)) == target
    return total, greedy


def test_loglikelihood_matches_float64(tiny):
    """Batched, padded, bucketed sums equal float64 sums over one unpadded sequence at a time."""
    from nemodiff_jax.eval.lm_eval_model import NemodiffLM

    model, twin = tiny
    lm = NemodiffLM(model=model, batch_size=4)
    pairs = [("reverse: a b c =>", " c b a"), ("sort: 3 1 2 =>", " 1 2 3"), ("zip", " a 1 b 2 c 3 d 4 e 5 f 6"),
             ("", " q w e r t y"), ("repeat: x y z x y z x y z x y z =>", " x"),
             ("shift: " + " ".join("abcdefghijklmnop"), " b c d e f g h i j k l m n o p q r s t u v")]
    got = lm.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)])
    tok, bos = model.tokenizer, model.config.bos_token_id
    for (ctx, cont), (lp, greedy) in zip(pairs, got):
        whole = [bos, *tok.encode(ctx + cont)]
        n_cont = len(whole) - len([bos, *tok.encode(ctx)]) if ctx else len(tok.encode(cont))
        ref, ref_greedy = _ll_ref(twin, whole, n_cont, model.config.mask_token_id)
        assert lp == pytest.approx(ref, rel=1e-4, abs=2e-3)
        assert greedy == ref_greedy


def test_loglikelihood_rolling_matches_float64_windows(tiny):
    """Rolling windows of 16 tokens, built here by hand: each token predicted once, the last
    window with a full context (the harness's definition), summed in float64."""
    from nemodiff_jax.eval.lm_eval_model import NemodiffLM

    model, twin = tiny
    window = 16
    lm = NemodiffLM(model=model, batch_size=4, max_length=window)
    texts = ["a b c", "reverse: " + " ".join("qwertyuiopasdfghjklzxcvbnm") + " => m n b v c x z",
             " ".join("0123456789" * 4)]
    got = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)])
    bos, mask_id = model.config.bos_token_id, model.config.mask_token_id
    for text, lp in zip(texts, got):
        seq = [bos, *model.tokenizer.encode(text)]  # predict seq[1:]
        ref = 0.0
        for a in range(1, len(seq), window):  # predicted positions a .. b
            b = min(a + window - 1, len(seq) - 1)
            start = max(0, b - window)
            ref += _ll_ref(twin, seq[start: b + 1], b - a + 1, mask_id)[0]
        assert lp == pytest.approx(ref, rel=1e-4, abs=2e-3)
    assert len(model.tokenizer.encode(texts[2])) > 2 * window  # several windows were exercised


def test_no_retrace_inside_a_length_bucket(tiny):
    """Requests of any length inside a bucket reuse one trace; a longer bucket traces once."""
    from nemodiff_jax.eval import lm_eval_model as lme

    model, _ = tiny
    lm = lme.NemodiffLM(model=model, batch_size=4)

    def rows(lengths):
        return [(list(range(5, 5 + n)), list(range(6, 6 + n)), 2) for n in lengths]

    before = dict(lme.TRACES)
    lm._score_rows(rows([3, 9]))
    lm._score_rows(rows([4, 15, 16, 11, 7]))
    assert lme.TRACES[(4, 16)] - before.get((4, 16), 0) <= 1
    mid = dict(lme.TRACES)
    lm._score_rows(rows([2, 14, 5]))
    lm._score_rows(rows([17, 30, 32]))
    assert lme.TRACES[(4, 16)] == mid[(4, 16)]
    assert lme.TRACES[(4, 32)] - mid.get((4, 32), 0) <= 1
    lm._score_rows(rows([20, 25]))
    assert dict(lme.TRACES) == {**mid, (4, 32): lme.TRACES[(4, 32)]} and lme.TRACES[(4, 32)] <= mid.get((4, 32), 0) + 1


def test_cli_writes_results_and_telemetry_then_nemodiff_eval_reads_them(embedded, task_dir, tmp_path, monkeypatch):
    """``nemodiff lm-eval`` (the delegate, in process) on the local tasks, then
    ``nemodiff eval --from-harness`` turns its files into our results, table and plot."""
    from nemodiff_jax.eval import lm_eval_model as lme
    from nemodiff_jax.eval.cli import eval_main

    import lm_eval.tasks

    class LocalTasks(lm_eval.tasks.TaskManager):  # skip indexing the harness's thousands of built-in tasks
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "include_defaults": False})

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", LocalTasks)
    monkeypatch.setattr(lme, "INSTANCES", [])
    out = tmp_path / "harness"
    monkeypatch.setattr("nemodiff_jax.eval.models.load_model", lambda spec, dtype=None: embedded)
    rc = lme.main(["--model_args", f"path=embedded,mode=linear_spec,batch_size={BATCH}", "--tasks", "nd_gen,nd_mc",
                   "--include_path", str(task_dir), "--output_path", str(out), "--log_samples"])
    assert rc == 0
    results = sorted(out.rglob("results_*.json"))
    assert len(results) == 1
    tel = results[0].with_name(results[0].name.replace("results_", "nemodiff_telemetry_"))
    assert tel.is_file()
    tdata = json.loads(tel.read_text())
    assert tdata["label"].startswith("linear_spec") and tdata["generate_until"]["n"] == 4
    assert tdata["loglikelihood"]["rows"] == 12  # 4 documents x 3 choices
    rdata = json.loads(results[0].read_text())
    assert 0.0 <= rdata["results"]["nd_mc"]["acc,none"] <= 1.0

    conv = tmp_path / "ours"
    assert eval_main(["--from-harness", str(out), "--out", str(conv), "--plot", str(conv / "tpf.png")]) == 0
    saved = json.loads((conv / "results.json").read_text())
    gen = next(r for r in saved["metrics"] if r["task"] == "nd_gen")
    assert gen["accuracy"] == rdata["results"]["nd_gen"]["exact_match,none"]
    assert gen["tpf"] == pytest.approx(tdata["per_task"]["nd_gen"]["tpf"])
    assert gen["acceptance_length"] == pytest.approx(tdata["per_task"]["nd_gen"]["acceptance_length"])
    samples = [s for s in saved["samples"] if s["task"] == "nd_gen"]
    assert len(samples) == 4 and all(s["nfe"] > 0 for s in samples)
    assert sum(s["nfe"] for s in samples) == tdata["per_task"]["nd_gen"]["nfe"]
    assert (conv / "metrics.csv").is_file() and (conv / "tpf.png").stat().st_size > 0


def test_bad_model_args_are_one_clear_error(embedded):
    from nemodiff_jax.eval.lm_eval_model import NemodiffLM

    with pytest.raises(ValueError, match="mode must be one of"):
        NemodiffLM(model=embedded, mode="beam")
    with pytest.raises(ValueError, match="unknown model_args"):
        NemodiffLM.create_from_arg_string("path=embedded,thresold=0.9")
    with pytest.raises(ValueError, match="batch_size"):
        NemodiffLM(model=embedded, batch_size=0)
    with pytest.raises(ValueError, match="seed"):
        NemodiffLM(model=embedded, seed=-1)


def test_nemodiff_lm_eval_is_wired(capsys):
    """``nemodiff lm-eval --help`` reaches the delegate: our usage, then the harness's options."""
    from nemodiff_jax import cli

    assert cli.main(["lm-eval", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--model nemodiff is implied" in out and "--model_args" in out and "--tasks" in out


def test_primary_metric_choice_and_errors(tmp_path):
    """``--metric`` picks by name or name,filter; default the first non-stderr number; bad files are one error."""
    from nemodiff_jax.eval.harness import primary_metric, read_harness

    m = {"alias": "gsm8k", "exact_match,strict-match": 0.5, "exact_match_stderr,strict-match": 0.1,
         "exact_match,flexible-extract": 0.75}
    assert primary_metric(m) == ("exact_match,strict-match", 0.5)
    assert primary_metric(m, "exact_match,flexible-extract") == ("exact_match,flexible-extract", 0.75)
    assert primary_metric(m, "exact_match")[0] == "exact_match,strict-match"
    with pytest.raises(ValueError, match="no metric 'acc'"):
        primary_metric(m, "acc")
    (tmp_path / "results_x.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a JSON object"):
        read_harness(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no lm-eval results"):
        read_harness(tmp_path / "empty")
