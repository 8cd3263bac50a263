"""The committed tokenizer: special ids, one token per task symbol, determinism, chat template."""

from __future__ import annotations

import json

import jinja2
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from nemodiff_jax.data import tasks as T
from nemodiff_jax.data import tokenizer_train as tt


@pytest.fixture(scope="module")
def tok():
    return tt.load_tokenizer()


def test_special_token_ids(tok):
    expected = ["<pad>", "<bos>", "<eos>", "<mask>", "<think>", "</think>", "[INST]", "[/INST]"]
    assert [tok.id_to_token(i) for i in range(8)] == expected
    assert (tt.PAD_ID, tt.BOS_ID, tt.EOS_ID, tt.MASK_ID) == (0, 1, 2, 3)
    assert tok.get_vocab_size() == tt.VOCAB_SIZE == 2048
    # Special tokens are atomic inside text, and encode adds nothing on its own.
    assert tok.encode("<mask><eos>").ids == [3, 2]
    assert tok.encode("[INST]hi[/INST]").ids[0] == 6 and tok.encode("[INST]hi[/INST]").ids[-1] == 7


def test_one_token_per_symbol(tok):
    for s in T.SYMBOLS:
        assert len(tok.encode(" " + s).ids) == 1, s
    for s in (" =>", " |", " +", ":"):
        assert len(tok.encode(s).ids) == 1, s
    # No token holds two digits (digits are split individually).
    decoded = [tok.decode([i]) for i in range(8, tok.get_vocab_size())]
    assert not [d for d in decoded if sum(c.isdigit() for c in d) > 1]
    assert tok.encode("12345").tokens == ["1", "2", "3", "4", "5"]


def test_task_examples_tokenize_per_symbol(tok):
    for prompt, answer, _ in T.build_task_dataset("test", 70, seed=0, tasks=list(T.TASKS)):
        a = tok.encode(answer).ids
        assert len(a) == len(answer.removesuffix(T.EOS).split()) + 1
        assert a[-1] == tt.EOS_ID and tt.EOS_ID not in a[:-1]
        # Encoding prompt and answer apart equals encoding the whole text.
        assert tok.encode(prompt).ids + a == tok.encode(prompt + answer).ids
        whole = tok.encode(prompt + answer).ids
        assert tok.decode(whole, skip_special_tokens=False) == prompt + answer


def test_english_round_trips(tok):
    text = "To be, or not to be: that is the question.\nWhether 'tis nobler in the mind..."
    enc = tok.encode(text)
    assert tok.decode(enc.ids) == text
    assert len(enc.ids) < len(text) / 2  # BPE actually compresses English


def test_retraining_reproduces_committed_files(tmp_path):
    out = tt.save_tokenizer(tt.build_tokenizer(), tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (out / name).read_bytes() == (tt.TOKENIZER_DIR / name).read_bytes(), name


def _render(template: str, messages, **special) -> str:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = lambda msg: (_ for _ in ()).throw(jinja2.TemplateError(msg))
    return env.from_string(template).render(messages=messages, **special)


MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "reverse: a b c =>"},
    {"role": "assistant", "content": " c b a"},
    {"role": "user", "content": "sort: 3 1 =>"},
]
RENDERED = "<bos>[INST]Be brief.\n\nreverse: a b c =>[/INST] c b a<eos>[INST]sort: 3 1 =>[/INST]"


def test_chat_template_renders():
    config = json.loads((tt.TOKENIZER_DIR / "tokenizer_config.json").read_text())
    special = json.loads((tt.TOKENIZER_DIR / "special_tokens_map.json").read_text())
    assert config["bos_token"] == special["bos_token"] == "<bos>"
    assert config["eos_token"] == special["eos_token"] == "<eos>"
    out = _render(config["chat_template"], MESSAGES, bos_token="<bos>", eos_token="<eos>")
    assert out == RENDERED
    with pytest.raises(jinja2.TemplateError):
        _render(config["chat_template"], [{"role": "tool", "content": "x"}],
                bos_token="", eos_token="")


def test_hf_tokenizer_matches():
    pytest.importorskip("transformers")
    hf = tt.load_hf_tokenizer()
    assert hf.apply_chat_template(MESSAGES, tokenize=False) == RENDERED
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.mask_token_id) == (1, 2, 0, 3)
    text = "reverse: a b c => c b a<eos>"
    assert hf.encode(text, add_special_tokens=False) == tt.load_tokenizer().encode(text).ids
