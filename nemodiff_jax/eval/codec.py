"""Prompt text -> token ids, generated ids -> scorer text, whatever tokenizer the model carries.

Evaluation owns this step (rather than passing text to ``generate``) so that prompt lengths
are known before batching (bucketing), and so the scorer sees an explicit EOS marker.
The synthetic tasks were trained as ``<bos> prompt`` (``nemodiff_jax.data.batches.prompt_ids``);
a model without a tokenizer (a random test model) uses the committed task tokenizer.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from .scorers import EOS


class Codec:
    """Encode prompts with the library's one encoder (:func:`nemodiff_jax.io.tokenizer.encode_prompt`,
    BOS first); decode generations with :data:`EOS` appended on stop."""

    def __init__(self, tokenizer, bos_id: int, eos_id: int, special_ids: Iterable[int] = ()):
        # nemodiff_jax.io.tokenizer.Tokenizer wraps a `tokenizers.Tokenizer` as `.hf`.
        self.tok = getattr(tokenizer, "hf", tokenizer)
        self.bos_id, self.eos_id = bos_id, eos_id
        self.special = set(special_ids)

    @staticmethod
    def for_model(model) -> "Codec":
        cfg = model.config
        tok = getattr(model, "tokenizer", None)
        if tok is None:
            from ..data.tokenizer_train import load_tokenizer

            tok = load_tokenizer()
        special = {cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id, cfg.mask_token_id}
        return Codec(tok, cfg.bos_token_id, cfg.eos_token_id, special)

    def encode(self, text: str) -> list[int]:
        from ..io.tokenizer import encode_prompt

        return encode_prompt(self.tok, text, bos_id=self.bos_id)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of the ids before the first EOS, plus :data:`EOS` when there was one."""
        ids = [int(i) for i in ids]
        stopped = self.eos_id in ids
        if stopped:
            ids = ids[: ids.index(self.eos_id)]
        ids = [i for i in ids if i not in self.special]
        text = self._decode(ids)
        return text + EOS if stopped else text

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)
