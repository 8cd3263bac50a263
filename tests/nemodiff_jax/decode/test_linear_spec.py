"""Linear self-speculation vs independent references: a cache-free greedy AR brute force, a
plain-python docs/ALGORITHMS.md, "Linear self-speculation" (draft / verify / accept) on explicit sequences, and the exact AR
distribution by enumeration for speculative sampling. Compiles are the cost here (2 cores), so
every test shares a few static shapes and varies only traced knobs and parameters."""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps

import nemodiff_jax as nd
from nemodiff_jax.model import masks
from nemodiff_jax.decode import engine
from nemodiff_jax.decode.linear_spec import linear_cache_len
from tests.nemodiff_jax.decode.tiny import (
    ORACLE_WIDTH, TINY, greedy_np, pad, prompts, relabel, seq_logits, softmax_np, swap_ids,
)

LENGTHS = [5, 11, 3]
OUT = 64  # generate()'s output bucket
MAX_NEW = 12


def key(seed):
    # rbg keys: same semantics, far cheaper to compile on CPU than threefry.
    return jax.random.key(seed, impl="rbg")


CFG = TINY.replace(lora_rank=4, lora_alpha=8.0)
_init = jax.jit(nd.init_params, static_argnums=(0, 1))  # jitted: far cheaper than eager init here


@functools.lru_cache(maxsize=None)
def lora_model(variant: int = 0) -> nd.Model:
    """The tiny.py recipe (weights x10, head x20: attention matters, argmaxes are clear) with a
    non-zero draft LoRA (lora_b starts at zero). ``variant`` 1 also ties the mask embedding to a
    token, so drafts agree with the verifier more often (long acceptances)."""
    rng = np.random.default_rng(7)

    def scale(path, x):
        name = jax.tree_util.keystr(path)
        if "lora_b" in name:
            return jnp.asarray(rng.normal(size=x.shape).astype(np.float32)) * 2.0
        if "diffusion_head" in name:
            return x * 20.0
        return x if "norm" in name else x * 10.0

    params = dict(jax.tree_util.tree_map_with_path(scale, _init(CFG, 0)))
    if variant == 1:
        params["embed_tokens"] = params["embed_tokens"].at[CFG.mask_token_id].set(params["embed_tokens"][40])
    return nd.Model(CFG, params)


@functools.lru_cache(maxsize=None)
def constant_model() -> nd.Model:
    """Zero token embeddings: every hidden state is zero, so every pass (AR or draft) predicts
    the same token and every draft is accepted."""
    params = dict(lora_model(0).params)
    params["embed_tokens"] = jnp.zeros_like(params["embed_tokens"])
    return nd.Model(CFG, params)


def run(model, rows, max_new=MAX_NEW, *, bk=4, temperature=0.0, top_k=0, top_p=1.0, threshold=0.0, lora=1.0,
        think=-1, end_think=-1, seed=0, acceptance="speculative"):
    p, pl = pad(rows)
    return engine.run(
        model.params, model.config, p, pl, key(seed), mode="linear_spec", block_length=bk, out_len=OUT,
        cache_len=linear_cache_len(p.shape[1], OUT, bk), acceptance=acceptance, max_new_tokens=max_new,
        temperature=temperature, top_k=top_k, top_p=top_p, threshold=threshold, lora=lora,
        max_thinking_tokens=think, end_think_id=end_think,
    )


def brute_greedy(model, prompt, max_new, think=-1, end_think=-1):
    key_ = (id(model.params["embed_tokens"]), tuple(int(t) for t in prompt), max_new, think, end_think)
    if key_ not in _BRUTE:
        _BRUTE[key_] = (model, _brute_greedy(model, prompt, max_new, think, end_think))
    return list(_BRUTE[key_][1])


_BRUTE: dict = {}  # memo across tests (the model is kept alive with its result, so ids stay unique)


def _brute_greedy(model, prompt, max_new, think=-1, end_think=-1):
    """Greedy AR recomputing logits of the whole sequence each step (no cache), with the AR
    thinking rule (the token at generated index ``think`` is end-think unless already emitted)."""
    cfg = model.config
    seq, out = list(prompt), []
    for _ in range(max_new):
        tok = int(greedy_np(seq_logits(model, seq)[-1], cfg.mask_token_id))
        if think >= 0 and len(out) >= think and end_think not in out:
            tok = end_think
        out.append(tok)
        seq.append(tok)
        if tok == cfg.eos_token_id:
            break
    return out


def draft_logits(model, seq, l0: int, lora: float) -> np.ndarray:
    """Logits of ``seq`` with queries before ``l0`` causal and LoRA-off (they stand for the cached
    prefix), and queries from ``l0`` on bidirectional with the given LoRA switch: the LoRA is a
    per-query [1, W, 1] array, so it reaches only the block's hidden states."""
    n = len(seq)
    ids = jnp.asarray([list(seq) + [0] * (ORACLE_WIDTH - n)], jnp.int32)
    policy = masks.mixed(jnp.zeros((1,), jnp.int32), jnp.asarray([l0]), jnp.asarray([n]), 1)
    pos = jnp.arange(ORACLE_WIDTH, dtype=jnp.int32)[None]
    per_query = jnp.asarray((np.arange(ORACLE_WIDTH) >= l0) * lora, jnp.float32)[None, :, None]
    logits, _ = nd.forward(model.params, model.config, ids, pos, policy, None, per_query)
    return np.array(logits[0, l0:n])


def reference_linear(model, prompt, max_new, bk, threshold, lora, think=-1, end_think=-1, clip=True):
    """docs/ALGORITHMS.md, "Linear self-speculation" at T = 0 in plain python on explicit sequences (no cache): returns
    (tokens, nfe, acceptance lengths, commit_pass). The first draft pass runs with the prefill, on
    ``prompt ++ [M] * bk`` (block position 0 still a mask), and counts no NFE of its own.

    ``clip``: the run of accepted drafts is counted up to the block's first drafted EOS and the
    tokens left under ``max_new`` (what the engine records: nothing past them is emitted); False
    counts every match, as the HF loop does."""
    cfg = model.config
    m, eos = cfg.mask_token_id, cfg.eos_token_id
    prompt = [int(t) for t in prompt]
    nfe = 1
    seed = int(greedy_np(seq_logits(model, prompt)[-1], m))
    if think == 0:
        seed = end_think
    out, passes, acc = [seed], [1], []
    if seed == eos:
        return out, nfe, acc, passes
    fused = True
    while len(out) < max_new:
        prefix = prompt + out[:-1]
        l0 = len(prefix)
        block = [out[-1]] + [m] * (bk - 1)
        while m in block:  # draft: bidirectional over the block, causal prefix, LoRA as given
            if fused:  # the prefill's window: the seed was not known yet
                logits = draft_logits(model, prompt + [m] * bk, l0, lora)
            else:
                logits = draft_logits(model, prefix + block, l0, lora)
                nfe += 1
            fused = False
            tok = greedy_np(logits, m)
            conf = softmax_np(logits)[np.arange(bk), tok]
            masked = [j for j in range(bk) if block[j] == m]
            if threshold <= 0:
                pick = masked
            else:
                best = max(masked, key=lambda j: conf[j])
                pick = [j for j in masked if conf[j] >= threshold or j == best]
            for j in pick:
                block[j] = int(tok[j])
        fused = False
        ar = greedy_np(seq_logits(model, prefix + block)[l0:], m)  # verify: causal, LoRA off
        nfe += 1
        # Drafted tokens that can reach the output: up to the first drafted EOS, and the limit.
        reach = min(block.index(eos, 1) if eos in block[1:] else bk, max_new - len(out)) if clip else bk
        a = 1
        while a < bk and a <= reach and int(ar[a - 1]) == block[a]:
            a += 1
        acc.append(a)
        emitted = [int(t) for t in ar[:a]]
        if think >= 0 and end_think not in out:
            for j in range(a):
                if emitted[j] == end_think:
                    break
                if len(out) + j >= think:
                    emitted = emitted[:j] + [end_think]
                    break
        stop = eos in emitted
        if stop:
            emitted = emitted[: emitted.index(eos) + 1]
        out += emitted
        passes += [nfe] * len(emitted)
        if stop:
            break
    return out[:max_new], nfe, acc, passes[:max_new]


@pytest.mark.parametrize("bk", [4, 2])
def test_greedy_equals_brute_force_ar(bk):
    rows = prompts(LENGTHS)
    seen, by_lora = [], {0.0: [], 1.0: []}
    for variant in (0, 1):
        m = lora_model(variant)
        expect = [brute_greedy(m, r, MAX_NEW) for r in rows]
        for lora in (0.0, 1.0):
            out = run(m, rows, bk=bk, lora=lora)
            toks, n = np.asarray(out.tokens), np.asarray(out.num_tokens)
            for i in range(len(rows)):
                assert toks[i, : n[i]].tolist() == expect[i], (variant, lora, i)
                assert np.all(toks[i, n[i]:] == m.config.pad_token_id)
            st = {k: np.asarray(v) for k, v in out.stats.items()}
            # Stats are consistent with each other and with NFE = 2 per cycle at threshold 0 (the
            # first cycle's draft pass is the prefill's forward).
            np.testing.assert_array_equal(out.nfe, np.maximum(2 * st["cycles"], 1))
            np.testing.assert_array_equal(st["draft_passes"], st["cycles"] if bk > 1 else 0)
            np.testing.assert_array_equal((st["acceptance_lengths"] > 0).sum(1), st["cycles"])
            np.testing.assert_array_equal(st["position_accepts"].sum(1), st["acceptance_lengths"].sum(1))
            np.testing.assert_array_equal(st["position_trials"][:, :2], np.stack([st["cycles"]] * 2, 1))
            assert st["acceptance_lengths"].max() <= bk
            seen.append(st["acceptance_lengths"].max())
            by_lora[lora].append(st["acceptance_lengths"])
    assert max(seen) > 1  # the acceptance path was exercised
    if bk > 1:  # the draft LoRA changes the drafts (not the output)
        assert any(np.any(a != b) for a, b in zip(by_lora[0.0], by_lora[1.0]))


def test_rows_equal_rows_alone():
    m = lora_model(1)
    rows = prompts(LENGTHS)
    batch = run(m, rows)
    for i in (0, 2):
        alone = run(m, [rows[i]])
        n = int(alone.num_tokens[0])
        assert n == int(batch.num_tokens[i])
        np.testing.assert_array_equal(alone.tokens[0, :n], batch.tokens[i, :n])
        assert int(alone.nfe[0]) == int(batch.nfe[i])
        for k in ("acceptance_lengths", "position_accepts", "commit_pass"):
            np.testing.assert_array_equal(alone.stats[k][0], batch.stats[k][i])


@pytest.mark.parametrize("threshold", [0.0, 0.9])
def test_matches_python_reference_nfe_and_stats(threshold):
    rows = prompts(LENGTHS, seed=3)
    multi_pass = False
    for variant, lora, think in ((0, 1.0, -1), (1, 1.0, 5), (1, 0.0, -1)):
        m = lora_model(variant)
        out = run(m, rows, threshold=threshold, lora=lora, think=think, end_think=41)
        for i, r in enumerate(rows):
            toks, nfe, acc, passes = reference_linear(m, r, MAX_NEW, 4, threshold, lora, think, 41)
            n = int(out.num_tokens[i])
            assert np.asarray(out.tokens[i, :n]).tolist() == toks, (variant, i)
            assert int(out.nfe[i]) == nfe
            assert np.asarray(out.stats["acceptance_lengths"][i, : len(acc)]).tolist() == acc
            assert np.asarray(out.stats["commit_pass"][i, :n]).tolist() == passes
            if think >= 0:
                assert toks == brute_greedy(m, r, MAX_NEW, think, 41)  # the AR thinking rule
        multi_pass |= bool(np.any(out.stats["draft_passes"] > out.stats["cycles"]))
    assert multi_pass == (threshold > 0)


def test_acceptance_counts_stop_at_the_limit():
    """The run of accepted drafts is counted only up to the token limit (what lies past it is
    never emitted): on a network whose every pass predicts the same token every draft is
    accepted, so each limit inside a block cuts the count. The engine's tokens are the
    brute-force AR tokens, its counts the clipped reference's, which differ from counting
    every match."""
    m = constant_model()
    row = prompts([6])[0]
    for max_new in (2, 3, 7):
        toks, nfe, acc, _ = reference_linear(m, row, max_new, 4, 0.0, 1.0)
        assert acc != reference_linear(m, row, max_new, 4, 0.0, 1.0, clip=False)[2]  # the clip bites
        out = run(m, [row], max_new)
        n = int(out.num_tokens[0])
        assert np.asarray(out.tokens[0, :n]).tolist() == toks == brute_greedy(m, row, max_new)
        assert int(out.nfe[0]) == nfe
        assert np.asarray(out.stats["acceptance_lengths"][0, : len(acc)]).tolist() == acc


def test_no_recompile_across_knobs():
    m = lora_model(1)
    rows = prompts(LENGTHS)
    run(m, rows)
    size = engine.decode._cache_size()
    sweep = [(7, 0.0, 0.5, 1, 0, 1.0), (12, 0.8, 0.0, 2, 5, 0.9), (3, 1.5, 0.7, 3, 0, 1.0)]
    for max_new, t, thr, seed, tk, tp in sweep:
        o = run(m, rows, max_new, temperature=t, threshold=thr, seed=seed, top_k=tk, top_p=tp, think=2, end_think=9)
        assert np.all(np.asarray(o.num_tokens) <= max_new)
        assert not np.any(np.asarray(o.tokens) == m.config.mask_token_id)
    assert engine.decode._cache_size() == size


def test_per_row_eos():
    m = lora_model(1)
    rows = prompts(LENGTHS)
    free = brute_greedy(m, rows[0], MAX_NEW)
    eos = m.config.eos_token_id
    # Make the token row 0 emits at index 3 the EOS: same network, ids relabelled (no recompile).
    m2, rows2 = relabel(m, free[3], eos), swap_ids(rows, free[3], eos)
    out = run(m2, rows2)
    assert int(out.num_tokens[0]) <= 4
    for i, r in enumerate(rows2):
        toks, nfe, acc, _ = reference_linear(m2, r, MAX_NEW, 4, 0.0, 1.0)
        assert toks == brute_greedy(m2, r, MAX_NEW)
        n = int(out.num_tokens[i])
        assert np.asarray(out.tokens[i, :n]).tolist() == toks
        assert int(out.nfe[i]) == nfe  # a finished row stops counting


def test_cache_too_small_raises():
    m = lora_model(0)
    p, pl = pad(prompts(LENGTHS))
    with pytest.raises(ValueError, match="cache_len"):
        engine.run(m.params, m.config, p, pl, key(0), mode="linear_spec", block_length=4, out_len=OUT,
                   cache_len=OUT, max_new_tokens=4, lora=1.0)


# --- speculative sampling follows the AR distribution ----------------------------------

DIST_ROWS, DIST_NEW, DIST_BK, TEMP, TOP_K = 2000, 3, 3, 0.8, 4


@functools.lru_cache(maxsize=None)
def sampling_model() -> nd.Model:
    """Unscaled init (a near-bigram network) whose embeddings share a common direction, so the
    draft and the verifier distributions overlap partly: acceptance is neither ~0 nor ~1, which is
    where a wrong residual or acceptance rule shows in the output law."""
    raw = dict(_init(CFG, 0))
    u = np.random.default_rng(0).normal(size=raw["embed_tokens"].shape[1]).astype(np.float32)
    raw["embed_tokens"] = raw["embed_tokens"] + 8.0 * 0.02 * u[None]
    raw["diffusion_head"] = raw["diffusion_head"] * 20.0
    layers = dict(raw["layers"])
    layers["self_attn"] = dict(layers["self_attn"], lora_b=lora_model(0).params["layers"]["self_attn"]["lora_b"])
    raw["layers"] = layers
    return nd.Model(CFG, raw)


def filtered_np(logits, mask_id):
    """The AR sampling law at (TEMP, TOP_K), mask excluded, written independently in numpy."""
    x = np.asarray(logits, np.float64) / TEMP
    x[mask_id] = -np.inf
    keep = np.argsort(-x, kind="stable")[:TOP_K]
    out = np.zeros_like(x)
    e = np.exp(x[keep] - x[keep].max())
    out[keep] = e / e.sum()
    return out


def exact_ar_distribution(model, prompt):
    """Probability of every output (tuple, cut after EOS) of AR sampling by enumeration."""
    cfg = model.config
    law = {(): 1.0}
    for _ in range(DIST_NEW):
        nxt = {}
        for seq, pr in law.items():
            if seq and seq[-1] == cfg.eos_token_id:
                nxt[seq] = nxt.get(seq, 0.0) + pr
                continue
            dist = filtered_np(seq_logits(model, list(prompt) + list(seq))[-1], cfg.mask_token_id)
            for t in np.nonzero(dist > 0)[0]:
                nxt[seq + (int(t),)] = nxt.get(seq + (int(t),), 0.0) + pr * dist[t]
        law = nxt
    return law


def run_many(model, prompt, acceptance, temperature=TEMP, seed=11):
    p, pl = pad([prompt] * DIST_ROWS)
    return engine.run(
        model.params, model.config, p, pl, key(seed), mode="linear_spec", block_length=DIST_BK, out_len=DIST_NEW,
        cache_len=linear_cache_len(p.shape[1], DIST_NEW, DIST_BK), acceptance=acceptance,
        max_new_tokens=DIST_NEW, temperature=temperature, top_k=TOP_K, lora=1.0,
    )


def test_speculative_sampling_follows_ar_distribution():
    m = sampling_model()
    prompt = prompts([4], seed=5)[0]
    law = exact_ar_distribution(m, prompt)
    keys = sorted(law, key=law.get, reverse=True)
    expected = np.array([law[k] * DIST_ROWS for k in keys])
    big = expected >= 5  # pool the rare outcomes into one cell
    mean_acc = {}
    for acceptance in ("speculative", "match"):
        out = run_many(m, prompt, acceptance)
        toks, n = np.asarray(out.tokens), np.asarray(out.num_tokens)
        counts = collections.Counter(tuple(toks[i, : n[i]].tolist()) for i in range(DIST_ROWS))
        assert set(counts) <= set(law), set(counts) - set(law)  # nothing outside the AR support
        observed = np.array([counts.get(k, 0) for k in keys], np.float64)
        e = np.append(expected[big], expected[~big].sum())
        o = np.append(observed[big], observed[~big].sum())
        keep = e > 0
        chi2 = float((((o[keep] - e[keep]) ** 2) / e[keep]).sum())
        pvalue = sps.chi2.sf(chi2, keep.sum() - 1)
        assert pvalue > 1e-3, (acceptance, chi2, keep.sum(), pvalue)
        first = np.asarray(out.stats["acceptance_lengths"][:, 0])
        mean_acc[acceptance] = first[first > 0].mean()
    # Speculative acceptance is 1 - TV(p, q) per position, "match" only sum(p * q).
    assert mean_acc["speculative"] > mean_acc["match"] + 0.3, mean_acc


def test_both_rules_are_greedy_at_t0():
    m = sampling_model()
    prompt = prompts([4], seed=5)[0]
    expect = brute_greedy(m, prompt, DIST_NEW)
    for acceptance in ("speculative", "match"):
        out = run_many(m, prompt, acceptance, temperature=0.0)
        toks, n = np.asarray(out.tokens), np.asarray(out.num_tokens)
        assert np.all(n == len(expect))
        assert np.all(toks[:, : len(expect)] == np.asarray(expect)[None])
