"""nemodiff_jax.io.tokenizer against independent references: a tokenizer built here with HF
``tokenizers``, mistral-common's own Tekkenizer on the real 131k Tekken vocabulary, and
transformers' chat-template rendering."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from nemodiff_jax.model.config import NLDConfig
from nemodiff_jax.io.tokenizer import Tokenizer

SPECIALS = ["<pad>", "<bos>", "<eos>", "<mask>", "<think>", "</think>", "[INST]", "[/INST]"]
TEMPLATE = (
    "{{- bos_token }}{%- for m in messages %}"
    "{%- if m['role'] == 'user' %}{{- '[INST]' + m['content'] + '[/INST]' }}"
    "{%- elif m['role'] == 'assistant' %}{{- m['content'] + eos_token }}"
    "{%- else %}{{- raise_exception('unknown role: ' + m['role']) }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<think>' }}{%- endif %}"
)
TEXTS = ["Hello, world!", "naïve café — 東京 🤖 ∑x²", "  two spaces\n\nnew lines\ttab", "def f(x):\n    return x**2",
         "Привет мир", "1234567890", ""]


def build_tokenizer_dir(directory: Path, template: str | None = TEMPLATE, **config_extra) -> Path:
    """A small byte-level BPE with the project's special ids, saved like a model directory."""
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(["the quick brown fox jumps over the lazy dog " * 4, *TEXTS] * 3, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    hf.save(str(directory / "tokenizer.json"))
    tcfg = {"bos_token": "<bos>", "eos_token": {"content": "<eos>", "special": True}, "pad_token": "<pad>",
            "mask_token": "<mask>", **config_extra}
    if template is not None:
        tcfg["chat_template"] = template
    (directory / "tokenizer_config.json").write_text(json.dumps(tcfg))
    return directory


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = build_tokenizer_dir(tmp_path_factory.mktemp("tok"))
    cfg = NLDConfig.preset("tiny").replace(vocab_size=512)
    return Tokenizer.from_dir(d, cfg), HFTokenizer.from_file(str(d / "tokenizer.json"))


def test_ids_match_hf_tokenizers(small):
    tok, hf = small
    assert (tok.bos_id, tok.eos_id, tok.mask_id, tok.pad_id) == (1, 2, 3, 0)
    assert tok.vocab_size == hf.get_vocab_size()
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False).ids
        assert tok.encode(text, add_bos=True) == [1, *ids]
        assert tok.decode(ids) == text


def test_special_tokens_in_text_and_decode(small):
    tok, _ = small
    ids = tok.encode("[INST]hi[/INST]<mask><eos>")
    assert ids[0] == 6 and ids[-3:] == [7, 3, 2]
    assert tok.decode(ids) == "hi"
    assert tok.decode(ids, skip_special=False) == "[INST]hi[/INST]<mask><eos>"
    assert tok.id_to_token(3) == "<mask>" and tok.token_to_id("</think>") == 5
    assert tok.is_special(2) and not tok.is_special(ids[1])
    assert tok.end_think_id == 5


def test_config_ids_win_over_tokenizer_files(tmp_path):
    """docs/ALGORITHMS.md, "Checkpoints and special tokens": the EOS used for stopping is the config's, whatever tokenizer_config names."""
    d = build_tokenizer_dir(tmp_path)
    cfg = NLDConfig.preset("tiny").replace(vocab_size=512, eos_token_id=7, mask_token_id=4)
    tok = Tokenizer.from_dir(d, cfg)
    assert (tok.eos_id, tok.mask_id) == (7, 4)
    # The template's eos_token string still comes from tokenizer_config.json, as in transformers.
    assert tok.apply_chat_template([{"role": "assistant", "content": "x"}], add_generation_prompt=False) == "<bos>x<eos>"


def test_chat_template(small):
    tok, _ = small
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "?"}]
    text = tok.apply_chat_template(msgs)
    assert text == "<bos>[INST]hi[/INST]yo<eos>[INST]?[/INST]<think>"
    assert tok.apply_chat_template(msgs, add_generation_prompt=False).endswith("[/INST]")
    ids = tok.apply_chat_template(msgs, tokenize=True)
    assert ids[:2] == [1, 6] and ids[-2:] == [7, 4] and ids.count(1) == 1
    with pytest.raises(ValueError, match="unknown role: robot"):
        tok.apply_chat_template([{"role": "robot", "content": "x"}])


def test_template_sources(tmp_path):
    # chat_template.jinja wins over tokenizer_config.json; named template lists pick "default".
    d = build_tokenizer_dir(tmp_path / "a")
    (d / "chat_template.jinja").write_text("{{ bos_token }}J{{ messages[0]['content'] }}")
    assert Tokenizer.from_dir(d).apply_chat_template([{"role": "user", "content": "q"}]) == "<bos>Jq"
    d = build_tokenizer_dir(tmp_path / "b", template=[{"name": "tool_use", "template": "T"},
                                                      {"name": "default", "template": "D"}])
    assert Tokenizer.from_dir(d).apply_chat_template([]) == "D"
    d = build_tokenizer_dir(tmp_path / "c", template=None)
    with pytest.raises(ValueError, match="no chat template"):
        Tokenizer.from_dir(d).apply_chat_template([{"role": "user", "content": "q"}])


def test_bad_directories(tmp_path):
    with pytest.raises(ValueError, match="no tokenizer.json"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid tokenizer.json"):
        Tokenizer.from_dir(tmp_path)
    d = build_tokenizer_dir(tmp_path / "v")
    with pytest.raises(ValueError, match="vocab_size"):
        Tokenizer.from_dir(d, NLDConfig.preset("tiny").replace(vocab_size=100))


def hf_render(template: str, messages, add_generation_prompt=True, **tokens) -> str:
    """transformers' own chat-template renderer (what AutoTokenizer.apply_chat_template calls)."""
    cu = pytest.importorskip("transformers.utils.chat_template_utils")
    rendered, _ = cu.render_jinja_template([messages], chat_template=template,
                                           add_generation_prompt=add_generation_prompt, **tokens)
    return rendered[0]


def test_template_renders_like_transformers(small):
    tok, _ = small
    # Whitespace control (trim_blocks/lstrip_blocks) and loop controls must match transformers.
    template = ("{% for m in messages %}\n  {% if loop.index0 > 5 %}{% break %}{% endif %}\n"
                "<{{ m['role'] }}>{{ m['content'] | trim }}{{ eos_token }}\n{% endfor %}"
                "{% if add_generation_prompt %}<assistant>{% endif %}")
    ours = Tokenizer(tok.hf, chat_template=template, special_tokens=tok.special_tokens)
    msgs = [{"role": "user", "content": " a "}, {"role": "assistant", "content": "b"}]
    for agp in (True, False):
        want = hf_render(template, msgs, agp, bos_token="<bos>", eos_token="<eos>")
        assert ours.apply_chat_template(msgs, add_generation_prompt=agp) == want


# ---------------------------------------------------------------------- real Tekken vocabulary
@pytest.fixture(scope="session")
def tekken(request, tmp_path_factory):
    """(our Tokenizer, mistral-common Tekkenizer, transformers' fast tokenizer dir) for tekken_240911.

    The conversion takes ~10 s, so its result is kept in pytest's cache keyed by versions.
    """
    mistral_common = pytest.importorskip("mistral_common")
    transformers = pytest.importorskip("transformers")
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    src = Path(mistral_common.__file__).parent / "data" / "tekken_240911.json"
    if not src.is_file():
        pytest.skip(f"mistral-common {mistral_common.__version__} does not ship {src.name}")
    key = f"tekken_240911-{mistral_common.__version__}-{transformers.__version__}".replace(".", "_")
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    root = cache.mkdir("nemodiff-tokenizers") if cache else tmp_path_factory.mktemp("tekken")
    out = Path(root) / key
    if not (out / "tokenizer.json").is_file():
        from transformers.integrations.mistral import convert_tekken_tokenizer

        tmp = out.with_name(f"{key}.tmp{os.getpid()}")
        convert_tekken_tokenizer(str(src)).save_pretrained(str(tmp))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    cfg = NLDConfig.preset("8b")  # vocab 131072, BOS 1, EOS 11, mask 100 (docs/ALGORITHMS.md, "Checkpoints and special tokens")
    return Tokenizer.from_dir(out, cfg), Tekkenizer.from_file(str(src)), out


def test_tekken_vocabulary(tekken):
    tok, tek, _ = tekken
    assert tok.vocab_size == tek.n_words == 131072
    assert tok.bos_id == tek.bos_id == 1
    assert tok.encode("Hi", add_bos=True)[0] == 1
    assert (tok.eos_id, tok.mask_id) == (11, 100)
    assert tok.is_special(100) and tok.is_special(2)


@pytest.mark.parametrize("text", [*TEXTS, "日本語のテキスト、句読点。", "emoji 👩‍👩‍👧 zwj", "ÅΩ≈ç√∫˜µ≤≥÷",
                                  "mixed العربية and עברית", "</think>"])
def test_tekken_ids_match_mistral_common(tekken, text):
    tok, tek, _ = tekken
    ids = tok.encode(text)
    assert ids == tek.encode(text, bos=False, eos=False)
    assert tok.decode(ids) == tek.decode(ids) == text


def test_tekken_end_think_and_template(tekken):
    tok, tek, out = tekken
    # The harness's rule: the last id of encoding "</think>" ("</think>" is not one Tekken token).
    assert tok.end_think_id == tek.encode("</think>", bos=False, eos=False)[-1]
    template = (out / "chat_template.jinja").read_text() if (out / "chat_template.jinja").is_file() else None
    if not template:
        pytest.skip("this transformers version wrote no chat template for Tekken")
    assert tok.chat_template == template
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 東京"},
            {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Again?"}]
    assert tok.apply_chat_template(msgs) == hf_render(template, msgs, bos_token="<s>", eos_token="</s>")
    ids = tok.apply_chat_template(msgs, tokenize=True)
    assert ids[0] == 1 and ids.count(1) == 1 and 3 in ids  # one BOS, [INST] parsed as its id


# ---------------------------------------------------------------------- shipped tokenizers
SHIPPED = [Path(__file__).parents[3] / "nemodiff_jax" / p for p in ("data/assets/tokenizer", "assets/embedded")]


@pytest.mark.parametrize("directory", SHIPPED, ids=["data", "embedded"])
def test_shipped_tokenizer(directory):
    # Both directories ship in the repo: a missing file is a packaging bug, not a skip.
    assert (directory / "tokenizer.json").is_file(), f"no tokenizer at {directory}"
    cfg = NLDConfig.from_hf(directory) if (directory / "config.json").is_file() else None
    tok = Tokenizer.from_dir(directory, cfg)
    assert [tok.id_to_token(i) for i in range(8)] == SPECIALS
    assert (tok.bos_id, tok.eos_id, tok.mask_id) == (1, 2, 3)
    assert tok.end_think_id == 5
    text = "reverse: q w e r =>"
    assert tok.decode(tok.encode(text)) == text
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=True)
    assert ids[:2] == [1, 6] and ids[-1] == 7


# ---------------------------------------------------------------------- the one prompt encoder
EMBEDDED = Path(__file__).resolve().parents[3] / "nemodiff_jax" / "assets" / "embedded"


@pytest.mark.parametrize("post_processor", [False, True])
def test_encode_prompt_follows_transformers_add_special_tokens(tmp_path, post_processor):
    """``encode_prompt`` = transformers' ``tokenizer(text)["input_ids"]`` where the tokenizer adds
    BOS itself (the released NLD tokenizer); BOS + ids where it adds nothing (the shipped one)."""
    transformers = pytest.importorskip("transformers")
    from tokenizers.processors import TemplateProcessing

    from nemodiff_jax.io.tokenizer import encode_prompt

    d = tmp_path / "tok"
    shutil.copytree(EMBEDDED, d, ignore=shutil.ignore_patterns("*.safetensors", "linear_spec_lora"))
    if post_processor:
        hf = HFTokenizer.from_file(str(d / "tokenizer.json"))
        hf.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
        hf.save(str(d / "tokenizer.json"))
    ours = Tokenizer.from_dir(d, NLDConfig.from_hf(d))
    ref = transformers.PreTrainedTokenizerFast(tokenizer_file=str(d / "tokenizer.json"), bos_token="<bos>")
    for text in ["reverse: a b c =>", "sort: 3 1 2 =>", "Hello, world!", ""]:
        want = ref(text, add_special_tokens=True)["input_ids"]
        if not post_processor:
            assert want[:1] != [1]  # this tokenizer adds nothing: the model's BOS is put first
            want = [1, *want]
        assert ours.encode_prompt(text) == want == encode_prompt(ours.hf, text, bos_id=1)
        assert ours.encode_prompt("<bos>" + text) == want  # never a second BOS
