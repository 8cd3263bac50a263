"""An lm-evaluation-harness model, registered as ``nemodiff`` when this module is imported.

lm-eval 0.4.x finds models only inside its own package, so the harness is run through this
module (or ``nemodiff lm-eval``), which registers the model and hands the rest of the command
line to the harness's own CLI::

    python -m nemodiff_jax.eval.lm_eval_model --model nemodiff \\
        --model_args path=embedded,mode=linear_spec,block_length=32,batch_size=16 --tasks ...

or from Python: ``lm_eval.simple_evaluate(model=NemodiffLM(path=..., mode=...), tasks=[...])``.

What runs where:

* ``generate_until``: our batched engine, ``nemodiff_jax.generate(model, ids, mode=..., batch_size=...)``,
  in any mode. Requests are grouped by their generation settings (``max_gen_toks``,
  temperature, ``top_k``, ``top_p``); each group is sorted by prompt length and sent in calls
  of at most ``queue`` prompts (padded with copies to a multiple of ``batch_size``, so calls
  reuse one compiled program). The engine stops at EOS; each text is then cut at the first of
  the request's ``until`` strings, and the tokens at ``max_gen_toks`` (diffusion and quadratic
  speculation decode whole blocks, so they ask for ``max_gen_toks`` rounded up to a block).
  ``do_sample=False`` means temperature 0, as in the harness's HF model.
* ``loglikelihood`` / ``loglikelihood_rolling``: the causal forward (``nemodiff_jax.forward``
  under the causal policy, LoRA off), ``batch_size`` rows at a time, right-padded to a
  power-of-two length (at least 16): one trace per (rows, length bucket), never one per
  request length. Log-probabilities are the model's full softmax; ``is_greedy`` compares
  with the argmax over every token but the mask token (what greedy AR decoding emits).
  Rolling windows follow the harness (``get_rolling_token_windows``, BOS as prefix).
* Prompts are encoded here, ``[BOS] + tokens`` (transformers' ``add_special_tokens=True``),
  and passed to the engine as ids.

Telemetry (``NemodiffLM.telemetry()``): per task and in total, generated tokens, forward
passes (NFE, counted as ``generate`` documents), TPF = tokens / NFE (tokens before the
``until`` cut), mean acceptance length of the speculative modes, decode wall time; and the
log-likelihood batches and traces. It is logged after each call, written to
``telemetry_path`` (model argument) when given, and the CLI writes it beside the harness's
``results_*.json`` as ``nemodiff_telemetry_*.json`` when ``--output_path`` is given.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int
import lm_eval.models  # noqa: F401  (the harness's own models first: it loads them only into an empty registry)
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import model_registry, register_model

from .. import guard
from .runner import _acceptance  # mean acceptance length of one row, as nemodiff eval reports it
from ..decode.generate import MODES, generate
from ..model import masks, sharding
from ..model.forward import Model, forward

log = logging.getLogger("nemodiff.lm_eval")

LENGTH_BUCKET_MIN = 16
# Traces of the log-likelihood scorer, keyed by (rows, length): tests read it to show that
# request lengths inside a bucket never retrace.
TRACES: collections.Counter = collections.Counter()
INSTANCES: list = []  # every NemodiffLM built in this process
GEN_KEYS = ("until", "max_gen_toks", "temperature", "do_sample", "top_k", "top_p")


def length_bucket(n: int, cap: int) -> int:
    """Padded length for a row of ``n`` tokens: a power of two >= 16, at most ``cap``."""
    size = LENGTH_BUCKET_MIN
    while size < n:
        size *= 2
    return min(size, cap)


@functools.partial(jax.jit, static_argnames=("cfg", "mask_id"))
def token_scores(params, cfg, ids: Int[Array, "B L"], targets: Int[Array, "B L"], *, mask_id: int
                 ) -> tuple[Float[Array, "B L"], Bool[Array, "B L"]]:
    """Per position: log p(target | ids[:, :pos + 1]) under the causal forward, and whether the
    target is the argmax (mask token excluded). Right padding is harmless under a causal mask."""
    b, length = ids.shape
    TRACES[(b, length)] += 1
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
    policy = masks.causal(jnp.zeros((b,), jnp.int32), length, b)
    logits, _ = forward(params, cfg, ids, positions, policy, None, jnp.float32(0.0))
    logits = logits.astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    greedy = jnp.argmax(logits.at[..., mask_id].set(-jnp.inf), axis=-1) == targets
    return picked, greedy


@dataclasses.dataclass
class _Tally:
    """Telemetry of one group of generate requests (summed)."""

    n: int = 0
    tokens: int = 0
    nfe: int = 0
    wall_time: float = 0.0
    acceptance: list = dataclasses.field(default_factory=list)

    def add(self, tokens: int, nfe: int, wall: float, acceptance: float | None) -> None:
        self.n += 1
        self.tokens += tokens
        self.nfe += nfe
        self.wall_time += wall
        if acceptance is not None:
            self.acceptance.append(acceptance)

    def summary(self) -> dict[str, Any]:
        return dict(
            n=self.n, tokens=self.tokens, nfe=self.nfe, nfe_mean=self.nfe / max(self.n, 1),
            tokens_mean=self.tokens / max(self.n, 1), tpf=self.tokens / max(self.nfe, 1),
            acceptance_length=float(np.mean(self.acceptance)) if self.acceptance else None,
            tokens_per_s=self.tokens / self.wall_time if self.wall_time > 0 else None, wall_time=self.wall_time,
        )


def _task_tokenizer(cfg):
    """The committed task tokenizer, for a model without one (a random test model)."""
    from ..data.tokenizer_train import load_tokenizer
    from ..io.tokenizer import Tokenizer

    return Tokenizer(load_tokenizer(), bos_id=cfg.bos_token_id, eos_id=cfg.eos_token_id,
                     mask_id=cfg.mask_token_id, pad_id=cfg.pad_token_id)


def _register(cls):
    """Register ``cls`` as ``nemodiff`` unless a copy of this module did (``python -m`` runs it as ``__main__``)."""
    return cls if "nemodiff" in model_registry else register_model("nemodiff")(cls)


@_register
class NemodiffLM(TemplateLM):
    """lm-eval model over a nemodiff-jax checkpoint.

    Args (all keywords; from ``--model_args k=v,...``):
        path: ``embedded``, a model directory (HF NLD or converted), or ``random:tiny``.
        model: an already loaded :class:`nemodiff_jax.Model` (Python only; wins over ``path``).
        mode: ``ar``, ``diffusion``, ``linear_spec`` or ``quadratic_spec`` (generation only;
            log-likelihoods always use the causal forward).
        block_length, threshold, policy, lora: the mode's knobs, as ``generate`` takes them
            (``threshold``: diffusion's confidence threshold or linear speculation's draft
            threshold; ``None``: generate's default, for diffusion the quota schedule).
            ``lora`` defaults to on for linear speculation (when the model has one) and off
            for diffusion, as in ``nemodiff eval``.
        batch_size: engine slots for generation and rows per log-likelihood batch.
        queue: prompts per engine call (default 32 x batch_size).
        max_gen_toks: default generation budget when a task gives none (256).
        max_length: context limit (default: the config's ``max_position_embeddings``).
        seed: sampling seed (request k of a call samples with ``seed + k``).
        dtype: parameter dtype override (``float32``, ``bfloat16``).
        telemetry_path: write the telemetry JSON there after every call.
    """

    backend = "causal"

    def __init__(self, path: str = "embedded", *, model: Model | None = None, mode: str = "ar",
                 block_length: int | None = None, threshold: float | None = None, policy: str = "threshold",
                 lora: bool | None = None, batch_size: int | str | None = 8, queue: int | None = None,
                 max_gen_toks: int = 256, max_length: int | None = None, seed: int = 0, dtype: str | None = None,
                 telemetry_path: str | None = None, **ignored: Any):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        batch_size = 8 if batch_size in (None, "auto") else batch_size
        try:
            batch_size = int(batch_size)
        except (TypeError, ValueError):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}") from None
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        if queue is not None and (not isinstance(queue, int) or queue < 1):
            raise ValueError(f"queue must be a positive integer, got {queue!r}")
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
            raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
        if not isinstance(max_gen_toks, int) or max_gen_toks < 1:
            raise ValueError(f"max_gen_toks must be a positive integer, got {max_gen_toks!r}")
        unknown = sorted(k for k, v in ignored.items() if v is not None and k not in ("max_batch_size", "device"))
        if unknown:
            raise ValueError(f"nemodiff model: unknown model_args {unknown}")
        if model is None:
            from .models import load_model

            model = load_model(str(path), dtype=dtype)
        if model.tokenizer is None:
            model = model.replace(tokenizer=_task_tokenizer(model.config))
        self.model, self.cfg, self.tok = model, model.config, model.tokenizer
        limit = self.cfg.max_position_embeddings
        if max_length is not None and (not isinstance(max_length, int) or not 1 < max_length <= limit):
            raise ValueError(f"max_length must be an integer in (1, {limit}], got {max_length!r}")
        self.mode, self.batch_size, self.seed = mode, batch_size, int(seed)
        self.queue = queue or 32 * batch_size
        self.queue = max(batch_size, self.queue // batch_size * batch_size)
        self.default_max_gen_toks, self._max_length = max_gen_toks, max_length or limit
        self.block_length = block_length or self.cfg.block_size
        self.knobs: dict[str, Any] = {}
        if mode != "ar":
            self.knobs["block_length"] = self.block_length
        if mode in ("diffusion", "linear_spec"):
            if threshold is not None:
                self.knobs["threshold"] = float(threshold)
            if lora is not None:
                self.knobs["lora"] = bool(lora)
        if mode == "diffusion":
            self.knobs["policy"] = policy
            # the draft LoRA is linear speculation's; diffusion runs without it unless asked, as `nemodiff eval`
            self.knobs["lora"] = bool(lora) if lora is not None else False
        self.telemetry_path = telemetry_path
        self.label = mode + "".join(f";{k}={v}" for k, v in self.knobs.items()
                                    if (k, v) not in (("policy", "threshold"), ("lora", False)))
        self._gen: dict[str, _Tally] = collections.defaultdict(_Tally)
        self._requests: list[dict] = []
        self._ll = dict(requests=0, rows=0, batches=0, tokens_scored=0, wall_time=0.0)
        self._warned: set[str] = set()
        INSTANCES.append(self)  # the CLI writes the telemetry of the models the harness built

    # ------------------------------------------------------------------ harness hooks
    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        """As the base class, but ``--model_args`` win over the CLI's ``--batch_size``/``--device``."""
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    @property
    def eot_token_id(self) -> int:
        return self.cfg.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        return self.cfg.bos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return str(self.model.path or "nemodiff")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.tok.chat_template

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tok.apply_chat_template(chat_history, add_generation_prompt=add_generation_prompt)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """Ids of ``string``; BOS first unless ``add_special_tokens`` is False or the text starts with it."""
        ids = self.tok.encode(string)
        if add_special_tokens is not False and (not ids or ids[0] != self.cfg.bos_token_id):
            ids = [self.cfg.bos_token_id, *ids]
        return ids

    def tok_decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(ids)

    # ------------------------------------------------------------------ log-likelihood
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """Each request ``(strings, context_ids, continuation_ids)``: (sum log p(continuation), greedy)."""
        rows = []
        for _, ctx, cont in requests:
            if not cont:
                raise ValueError("loglikelihood: empty continuation")
            whole = (list(ctx) + list(cont))[-(self.max_length + 1):]
            if len(cont) >= len(whole):
                raise ValueError(f"loglikelihood: continuation of {len(cont)} tokens does not fit max_length "
                                 f"{self.max_length}")
            rows.append((whole[:-1], whole[1:], len(cont)))
        results = self._score_rows(rows)
        for (strings, _, _), res in zip(requests, results):
            if strings is not None and strings[0] is not None:
                self.cache_hook.add_partial("loglikelihood", strings, res)
        return results

    def _score_rows(self, rows: list[tuple[list[int], list[int], int]]) -> list[tuple[float, bool]]:
        """Score ``(inputs, targets, n)`` rows: the sum over the last ``n`` positions, in float64."""
        t0 = time.perf_counter()
        cap = min(self.cfg.max_position_embeddings, length_bucket(self.max_length, 1 << 62))
        by_bucket: dict[int, list[int]] = collections.defaultdict(list)
        for i, (inp, _, _) in enumerate(rows):
            by_bucket[length_bucket(len(inp), cap)].append(i)
        out: list[tuple[float, bool] | None] = [None] * len(rows)
        pad = self.cfg.pad_token_id
        with sharding.use_mesh(self.model.params):
            for width in sorted(by_bucket):
                idx = sorted(by_bucket[width], key=lambda i: -len(rows[i][0]))
                for s in range(0, len(idx), self.batch_size):
                    chunk = idx[s: s + self.batch_size]
                    ids = np.full((self.batch_size, width), pad, np.int32)
                    tgt = np.full((self.batch_size, width), pad, np.int32)
                    for r, i in enumerate(chunk):
                        inp, target, _ = rows[i]
                        ids[r, : len(inp)], tgt[r, : len(target)] = inp, target
                    logp, greedy = jax.device_get(token_scores(self.model.params, self.cfg, jnp.asarray(ids),
                                                               jnp.asarray(tgt), mask_id=self.cfg.mask_token_id))
                    for r, i in enumerate(chunk):
                        length, n = len(rows[i][0]), rows[i][2]
                        span = slice(length - n, length)
                        out[i] = (float(np.sum(logp[r, span].astype(np.float64))), bool(np.all(greedy[r, span])))
                        self._ll["tokens_scored"] += n
                    self._ll["batches"] += 1
                    guard.check()
        self._ll["rows"] += len(rows)
        self._ll["wall_time"] += time.perf_counter() - t0
        self._publish("loglikelihood")
        return out  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-string log-likelihoods over the harness's rolling windows (BOS as prefix)."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        rows, owner = [], []
        for k, req in enumerate(requests):
            (string,) = req.args[:1]
            windows = get_rolling_token_windows(token_list=self.tok_encode(string, add_special_tokens=False),
                                                prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                                                context_len=1)
            for ctx, cont in map(make_disjoint_window, windows):
                whole = (list(ctx) + list(cont))[-(self.max_length + 1):]
                rows.append((whole[:-1], whole[1:], len(cont)))
                owner.append(k)
        scores = self._score_rows(rows)
        totals = [0.0] * len(requests)
        for k, (lp, _) in zip(owner, scores):
            totals[k] += lp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), total)
        self._ll["requests"] += len(requests)
        return totals

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        self._ll["requests"] += len(requests)
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    # ------------------------------------------------------------------ generation
    def _settings(self, kwargs: dict) -> tuple[tuple, list[str]]:
        """(max_gen_toks, temperature, top_k, top_p) and the stop strings of one request."""
        kwargs = dict(kwargs or {})
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        extra = sorted(set(kwargs) - set(GEN_KEYS))
        for k in extra:
            if k not in self._warned:
                self._warned.add(k)
                log.warning("nemodiff: generation kwarg %r is not supported and is ignored", k)
        max_gen = kwargs.get("max_gen_toks", self.default_max_gen_toks)
        if not isinstance(max_gen, int) or isinstance(max_gen, bool) or max_gen < 1:
            raise ValueError(f"max_gen_toks must be a positive integer, got {max_gen!r}")
        do_sample = kwargs.get("do_sample")
        temperature = kwargs.get("temperature")
        if do_sample is False:
            temperature = 0.0
        elif temperature is None:
            temperature = 1.0 if do_sample else 0.0
        top_k = kwargs.get("top_k") or 0
        top_p = kwargs.get("top_p")
        top_p = 1.0 if top_p is None else float(top_p)
        return (int(max_gen), float(temperature), int(top_k), top_p), [s for s in until if s]

    def _prompt_ids(self, context: str, max_new: int) -> list[int]:
        """``[BOS] + tokens``, cut from the left (BOS kept) so the prompt, the budget and the
        mode's window slack fit ``max_length``."""
        ids = self.tok_encode(context)
        bl = self.block_length
        slack = {"ar": 0, "diffusion": bl, "linear_spec": bl, "quadratic_spec": bl * (bl + 1)}[self.mode]
        room = min(self.max_length, self.cfg.max_position_embeddings) - max_new - slack
        if room < 2:
            raise ValueError(f"max_gen_toks {max_new} (+ {slack} slack) leaves no room for a prompt in "
                             f"max_length {self.max_length}")
        return ids if len(ids) <= room else [ids[0], *ids[len(ids) - room + 1:]]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Generate through the engine, group by group; cut each text at its first stop string."""
        parsed = []
        for req in requests:
            context, kwargs = req.args[0], (req.args[1] if len(req.args) > 1 else {})
            settings, until = self._settings(kwargs)
            parsed.append((context, settings, until, req))
        groups: dict[tuple, list[int]] = collections.defaultdict(list)
        for i, (_, settings, _, _) in enumerate(parsed):
            groups[settings].append(i)
        out: list[str | None] = [None] * len(requests)
        for settings, members in groups.items():
            max_gen, temperature, top_k, top_p = settings
            bl = self.block_length
            ask = -(-max_gen // bl) * bl if self.mode in ("diffusion", "quadratic_spec") else max_gen
            ids = {i: self._prompt_ids(parsed[i][0], ask) for i in members}
            order = sorted(members, key=lambda i: (-len(ids[i]), i))
            for s in range(0, len(order), self.queue):
                chunk = order[s: s + self.queue]
                rows = [ids[i] for i in chunk]
                rows += [rows[-1]] * (-len(rows) % self.batch_size)
                res = generate(self.model, rows, mode=self.mode, max_new_tokens=ask, temperature=temperature,
                               top_k=top_k, top_p=top_p, seed=[self.seed + i for i in range(len(rows))],
                               batch_size=self.batch_size, **self.knobs)
                share = res.wall_time / len(rows)
                for r, i in enumerate(chunk):
                    context, _, until, req = parsed[i]
                    toks = res.tokens[r]
                    kept = [t for t in toks[:max_gen] if t != self.cfg.eos_token_id]
                    text = self.tok.decode(kept)
                    for stop in until:
                        text = text.split(stop)[0]
                    out[i] = text
                    task = getattr(req, "task_name", None) or "unknown"
                    acc = _acceptance(res.stats, r)
                    self._gen[task].add(len(toks), res.nfe[r], share, acc)
                    self._requests.append(dict(task=task, doc_id=getattr(req, "doc_id", None), tokens=len(toks),
                                               nfe=res.nfe[r], tpf=res.tpf[r], acceptance_length=acc,
                                               wall_time=share))
                    self.cache_hook.add_partial("generate_until", (context, req.args[1] if len(req.args) > 1
                                                                   else {}), text)
                guard.check()
        self._publish("generate_until")
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ telemetry
    def telemetry(self) -> dict[str, Any]:
        """Our decode statistics so far (see the module docstring)."""
        total = _Tally()
        for t in self._gen.values():
            total.n += t.n
            total.tokens += t.tokens
            total.nfe += t.nfe
            total.wall_time += t.wall_time
            total.acceptance += t.acceptance
        return dict(
            model=self.model.path, label=self.label, mode=self.mode, knobs=dict(self.knobs),
            batch_size=self.batch_size, generate_until=total.summary() if total.n else None,
            per_task={k: v.summary() for k, v in sorted(self._gen.items())},
            requests=list(self._requests), loglikelihood=dict(self._ll),
            traces={f"{b}x{length}": n for (b, length), n in sorted(TRACES.items())},
        )

    def write_telemetry(self, path) -> Path:
        from .report import write_json

        return write_json(self.telemetry(), path)

    def _publish(self, what: str) -> None:
        t = self.telemetry()
        if what == "generate_until" and t["generate_until"]:
            g = t["generate_until"]
            acc = "" if g["acceptance_length"] is None else f", acceptance {g['acceptance_length']:.2f}"
            log.info("nemodiff %s: %d requests, NFE %.1f/request, TPF %.2f%s", self.label, g["n"], g["nfe_mean"],
                     g["tpf"], acc)
        elif what == "loglikelihood":
            ll = t["loglikelihood"]
            log.info("nemodiff loglikelihood: %d rows in %d batches", ll["rows"], ll["batches"])
        if self.telemetry_path:
            self.write_telemetry(self.telemetry_path)


def _output_path(argv: Sequence[str]) -> str | None:
    for i, a in enumerate(argv):
        if a in ("--output_path", "-o") and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--output_path="):
            return a.split("=", 1)[1]
    return None


def write_cli_telemetry(output_path: str | None, started: float) -> list[Path]:
    """Telemetry of every model built in this run, beside the newest ``results_*.json`` written
    under ``output_path`` since ``started`` (as ``nemodiff_telemetry_<timestamp>.json``)."""
    if not output_path or not INSTANCES:
        return []
    root = Path(output_path)
    found = [p for p in (root.rglob("results_*.json") if root.is_dir() else []) if p.stat().st_mtime >= started - 1]
    if not found and root.suffix == ".json" and root.parent.is_dir():
        found = sorted(root.parent.glob(root.stem + "*.json"))
    paths = []
    target = max(found, key=lambda p: p.stat().st_mtime) if found else None
    for k, lm in enumerate(INSTANCES):
        if target is not None:
            stem = target.stem.replace("results_", "nemodiff_telemetry_", 1)
            path = target.with_name(stem + (f"_{k}" if k else "") + ".json")
        else:
            path = (root if root.suffix != ".json" else root.parent) / f"nemodiff_telemetry{f'_{k}' if k else ''}.json"
        paths.append(lm.write_telemetry(path))
    return paths


def print_telemetry() -> None:
    from .report import format_table

    rows = []
    for lm in INSTANCES:
        t = lm.telemetry()
        for task, s in t["per_task"].items():
            rows.append(dict(mode=lm.label, task=task, **s))
        if t["generate_until"] and len(t["per_task"]) > 1:
            rows.append(dict(mode=lm.label, task="all", **t["generate_until"]))
    if rows:
        print("nemodiff telemetry (generate_until):")
        print(format_table(rows, ["mode", "task", "n", "nfe_mean", "tokens_mean", "tpf", "acceptance_length",
                                  "tokens_per_s", "wall_time"]))


USAGE = """usage: nemodiff lm-eval [lm-eval run options]   (or: python -m nemodiff_jax.eval.lm_eval_model ...)

  --model nemodiff is implied; --model_args path=DIR|embedded,mode=ar|diffusion|linear_spec|quadratic_spec,
  block_length=N,threshold=X,batch_size=N,... (see nemodiff_jax.eval.lm_eval_model.NemodiffLM).
  With --output_path, our telemetry (NFE, TPF, acceptance) is written beside the harness's results.
example:
  nemodiff lm-eval --model_args path=embedded,mode=linear_spec,batch_size=16 --tasks gsm8k --output_path runs/h
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the harness's own CLI with ``nemodiff`` registered (``--model nemodiff`` is the default)."""
    from lm_eval.__main__ import cli_evaluate

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        argv = ["run", "--help"]
    if argv[0] not in ("run", "ls", "validate") and not any(a == "--model" or a.startswith("--model=")
                                                            for a in argv):
        argv = ["--model", "nemodiff", *argv]
    started = time.time()
    saved = sys.argv
    sys.argv = ["lm-eval", *argv]
    try:
        cli_evaluate()
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else 2
    finally:
        sys.argv = saved
    print_telemetry()
    for p in write_cli_telemetry(_output_path(argv), started):
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
