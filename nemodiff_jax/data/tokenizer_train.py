"""Trains the project's small byte-level BPE tokenizer offline (HF `tokenizers`).

    python -m nemodiff_jax.data.tokenizer_train OUT_DIR

Trained on the committed Shakespeare corpus plus task text from the train split only, so the
result is fixed by the repo (same files on every rerun). Why these choices:
- vocab 2048: keeps the embedding and LM head small for a ~5-20M parameter model;
- GPT-2 style split, but digits are isolated (`\\p{N}` not `\\p{N}+`) so no token holds two
  digits, and a leading space stays attached: " 7", " q", " =>" are each one token, which
  gives the tasks exactly one token per symbol;
- special tokens at fixed ids 0-7 (SPECIAL_TOKENS order), matching what the model expects.
The committed result lives in `assets/tokenizer/`; `load_tokenizer()` reads it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from nemodiff_jax.data import corpus, tasks

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<mask>", "<think>", "</think>", "[INST]", "[/INST]")
PAD_ID, BOS_ID, EOS_ID, MASK_ID, THINK_ID, END_THINK_ID, INST_ID, END_INST_ID = range(8)
VOCAB_SIZE = 2048
TOKENIZER_DIR = Path(__file__).resolve().parent / "assets" / "tokenizer"
# GPT-2's pattern with single digits; contractions kept so English stays compact.
SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
TASK_EXAMPLES = 14000  # 2000 per task: enough for every " x" symbol token to be merged
FORMAT_TOKENS = (" =>", " |", " +", ":")

CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- set ns = namespace(system='') %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{%- set ns.system = message['content'] + '\\n\\n' %}"
    "{%- elif message['role'] == 'user' %}"
    "{{- '[INST]' + ns.system + message['content'] + '[/INST]' }}{%- set ns.system = '' %}"
    "{%- elif message['role'] == 'assistant' %}{{- message['content'] + eos_token }}"
    "{%- else %}{{- raise_exception('unknown role: ' + message['role']) }}"
    "{%- endif %}"
    "{%- endfor %}"
)
SPECIAL_TOKENS_MAP = {
    "pad_token": "<pad>",
    "bos_token": "<bos>",
    "eos_token": "<eos>",
    "mask_token": "<mask>",
    "additional_special_tokens": ["<think>", "</think>", "[INST]", "[/INST]"],
}


def training_texts() -> list[str]:
    """Corpus plays (split into paragraphs) and train-split task text, fixed order."""
    texts = [p for doc in corpus.split_documents(corpus.load_corpus()) for p in doc.split("\n\n")]
    examples = tasks.build_task_dataset("train", TASK_EXAMPLES, seed=0, tasks=list(tasks.TASKS))
    texts += [(p + a).replace(tasks.EOS, "") for p, a, _ in examples]
    return texts


def build_tokenizer(vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """Trains the BPE tokenizer from `training_texts()` and checks its invariants."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_texts(), trainer=trainer)
    check_tokenizer(tok)
    return tok


def check_tokenizer(tok: Tokenizer) -> None:
    """Raises if special ids moved or a task symbol is not a single token."""
    for i, s in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(s) != i:
            raise AssertionError(f"{s} has id {tok.token_to_id(s)}, expected {i}")
    for s in [" " + c for c in tasks.SYMBOLS] + list(FORMAT_TOKENS):
        ids = tok.encode(s, add_special_tokens=False).ids
        if len(ids) != 1:
            raise AssertionError(f"{s!r} encodes to {len(ids)} tokens")


def save_tokenizer(tok: Tokenizer, out_dir: str | Path) -> Path:
    """Writes tokenizer.json, tokenizer_config.json and special_tokens_map.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"), pretty=True)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **{k: v for k, v in SPECIAL_TOKENS_MAP.items() if k != "additional_special_tokens"},
        "additional_special_tokens": SPECIAL_TOKENS_MAP["additional_special_tokens"],
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
        "chat_template": CHAT_TEMPLATE,
    }
    for name, obj in (("tokenizer_config.json", config),
                      ("special_tokens_map.json", SPECIAL_TOKENS_MAP)):
        (out / name).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    return out


def load_tokenizer(path: str | Path = TOKENIZER_DIR) -> Tokenizer:
    """The committed tokenizer (a `tokenizers.Tokenizer`; no BOS/EOS added by encode)."""
    path = Path(path)
    return Tokenizer.from_file(str(path / "tokenizer.json" if path.is_dir() else path))


def load_hf_tokenizer(path: str | Path = TOKENIZER_DIR):
    """The same tokenizer as a transformers `PreTrainedTokenizerFast` (has the chat template)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(path))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m nemodiff_jax.data.tokenizer_train OUT_DIR")
    out_dir = save_tokenizer(build_tokenizer(), sys.argv[1])
    print(f"wrote {out_dir} (vocab {VOCAB_SIZE})")
