"""Text <-> ids for a model directory: an HF ``tokenizer.json`` plus the chat template.

Why a wrapper and not ``transformers.AutoTokenizer``: the library must run without
transformers, and the decoding code needs only a few things from a tokenizer: ids for a
prompt, text for ids, the chat template, and the special ids the model was trained with.
Ids of the special tokens that drive decoding (BOS, EOS, mask, pad) come from the model
config, never from the tokenizer files (docs/ALGORITHMS.md, "Checkpoints and special tokens": the config's EOS 11 is the one used).

The chat template is rendered the way ``transformers`` renders it (sandboxed jinja2,
``trim_blocks``/``lstrip_blocks``, ``raise_exception``, ``bos_token``/``eos_token`` and the
other special-token strings as variables), so a checkpoint's ``chat_template.jinja`` gives
the same prompt here as in the reference harness.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as _HFTokenizer

_SPECIAL_NAMES = ("bos_token", "eos_token", "pad_token", "unk_token", "mask_token")


class Tokenizer:
    """An HF ``tokenizers`` tokenizer with the model's special ids and chat template.

    ``bos_id``/``eos_id``/``mask_id``/``pad_id`` are the ids decoding uses (from the config
    when one is given). Special tokens written in text (``"[INST]"``) encode to their ids.
    """

    def __init__(
        self,
        hf: _HFTokenizer,
        *,
        bos_id: int | None = None,
        eos_id: int | None = None,
        mask_id: int | None = None,
        pad_id: int | None = None,
        chat_template: str | None = None,
        special_tokens: dict[str, str] | None = None,
    ):
        self.hf = hf
        self.special_tokens = dict(special_tokens or {})
        self.bos_id = self._pick(bos_id, "bos_token")
        self.eos_id = self._pick(eos_id, "eos_token")
        self.mask_id = self._pick(mask_id, "mask_token")
        self.pad_id = self._pick(pad_id, "pad_token")
        self.chat_template = chat_template
        self._special_ids = {i for i, t in hf.get_added_tokens_decoder().items() if t.special}

    def _pick(self, explicit: int | None, name: str) -> int | None:
        if explicit is not None:
            return int(explicit)
        text = self.special_tokens.get(name)
        return None if text is None else self.hf.token_to_id(text)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dir(cls, directory: str | Path, cfg=None) -> "Tokenizer":
        """Read ``tokenizer.json``, ``tokenizer_config.json`` and ``chat_template.jinja`` if present.

        ``cfg`` (an :class:`~nemodiff_jax.model.config.NLDConfig`) supplies BOS/EOS/mask/pad ids.
        """
        directory = Path(directory)
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise ValueError(f"no tokenizer.json in {directory}")
        try:
            hf = _HFTokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises a bare Exception on malformed files
            raise ValueError(f"{path} is not a valid tokenizer.json: {e}") from None
        tcfg = _read_json(directory / "tokenizer_config.json")
        # tokenizer_config.json wins over special_tokens_map.json, as in transformers.
        named = {**_read_json(directory / "special_tokens_map.json"), **tcfg}
        specials = {k: v for k in _SPECIAL_NAMES if (v := _token_text(named.get(k))) is not None}
        template = _read_template(directory, tcfg)
        ids = {}
        if cfg is not None:
            ids = dict(bos_id=cfg.bos_token_id, eos_id=cfg.eos_token_id, mask_id=cfg.mask_token_id,
                       pad_id=cfg.pad_token_id)
            vocab = hf.get_vocab_size(with_added_tokens=True)
            if vocab > cfg.vocab_size:
                raise ValueError(
                    f"tokenizer in {directory} has {vocab} tokens but the model's vocab_size is {cfg.vocab_size}"
                )
        tok = cls(hf, chat_template=template, special_tokens=specials, **ids)
        # Template strings for BOS/EOS follow the ids the model uses when the files name none.
        for name, i in (("bos_token", tok.bos_id), ("eos_token", tok.eos_id)):
            if name not in tok.special_tokens and i is not None and tok.id_to_token(i) is not None:
                tok.special_tokens[name] = tok.id_to_token(i)
        return tok

    # ------------------------------------------------------------------ ids and text
    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Ids of ``text``; special tokens written in it become their ids. No post-processing
        template is applied, so BOS is present exactly when ``add_bos`` asks for it."""
        ids = self.hf.encode(text, add_special_tokens=False).ids
        if add_bos:
            if self.bos_id is None:
                raise ValueError("add_bos=True but this tokenizer has no BOS token")
            ids = [self.bos_id, *ids]
        return ids

    def encode_prompt(self, text: str) -> list[int]:
        """A prompt's ids as the whole library encodes prompts: see :func:`encode_prompt` (BOS first)."""
        return encode_prompt(self, text)

    def decode(self, ids, skip_special: bool = True) -> str:
        """Text of ``ids``; with ``skip_special`` the special tokens (EOS, mask, ...) are dropped."""
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def id_to_token(self, i: int) -> str | None:
        return self.hf.id_to_token(int(i))

    def token_to_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def is_special(self, i: int) -> bool:
        return int(i) in self._special_ids

    @property
    def end_think_id(self) -> int:
        """Id that closes a thinking span: the last id of encoding ``"</think>"`` (the NLD harness rule)."""
        return self.encode("</think>")[-1]

    # ------------------------------------------------------------------ chat
    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tokenize: bool = False,
        **extra: Any,
    ) -> str | list[int]:
        """Render ``messages`` ([{"role", "content"}, ...]) with the chat template.

        Returns the prompt text, or its ids with ``tokenize=True`` (the template writes BOS
        itself, so none is added). Template errors become ValueErrors.
        """
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat template (no chat_template.jinja or "
                             "chat_template in tokenizer_config.json)")
        import jinja2

        variables = {**self.special_tokens, **extra}
        variables.setdefault("bos_token", "")
        variables.setdefault("eos_token", "")
        try:
            text = _compile(self.chat_template).render(
                messages=messages, add_generation_prompt=add_generation_prompt, **variables
            )
        except jinja2.TemplateError as e:
            raise ValueError(f"chat template failed: {e}") from None
        return self.encode(text) if tokenize else text

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id}, "
                f"mask={self.mask_id}, pad={self.pad_id}, chat_template={self.chat_template is not None})")


# ---------------------------------------------------------------------- helpers
def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def _token_text(value) -> str | None:
    """A special token as tokenizer_config writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _read_template(directory: Path, tcfg: dict) -> str | None:
    """``chat_template.jinja`` wins over ``chat_template`` in tokenizer_config.json (HF order)."""
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = tcfg.get("chat_template")
    if isinstance(template, list):  # HF's named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) else None


_TEMPLATES: dict[str, Any] = {}


def _compile(source: str):
    """The template compiled once, in the sandbox transformers uses."""
    if source not in _TEMPLATES:
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            import jinja2

            raise jinja2.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                              sort_keys=sort_keys)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        _TEMPLATES[source] = env.from_string(source)
    return _TEMPLATES[source]


# ---------------------------------------------------------------------- the one prompt encoder
def encode_prompt(tokenizer, text: str, *, bos_id: int | None = None) -> list[int]:
    """The ids of a prompt string: the library's ONE string-encoding path.

    It follows the convention of ``transformers``' ``tokenizer(text)`` (``add_special_tokens=True``):
    whatever the tokenizer's own post-processor adds (the released NLD tokenizer adds BOS), and
    BOS in front when the tokenizer does not add it itself, because every NLD checkpoint was
    trained on ``<bos> prompt`` (the shipped tokenizer has no post-processor). A text that already
    starts with BOS (``"<bos>..."``, a rendered chat template) gets no second one (transformers
    would give two there).

    ``tokenizer``: a :class:`Tokenizer` or a raw ``tokenizers.Tokenizer``; ``bos_id``: BOS for a
    raw tokenizer (default: the :class:`Tokenizer`'s ``bos_id``). No BOS id known: none is added.
    """
    if not isinstance(text, str):
        raise ValueError(f"a prompt to encode must be a string, got {type(text).__name__}")
    hf = getattr(tokenizer, "hf", tokenizer)
    bos = getattr(tokenizer, "bos_id", None) if bos_id is None else bos_id
    ids = [int(i) for i in hf.encode(text, add_special_tokens=True).ids]
    if bos is not None and (not ids or ids[0] != bos):
        ids = [int(bos), *ids]
    if bos is not None and ids[:2] == [bos, bos]:  # the post-processor's BOS before one in the text
        ids = ids[1:]
    return ids
