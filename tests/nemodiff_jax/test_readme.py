"""The README's first Python example, run as a new user would: string prompts must give the right answer."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def first_python_block() -> str:
    return re.search(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S).group(1)


def test_readme_first_example_gives_the_right_answer():
    scope: dict = {}
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        exec(compile(first_python_block(), str(README), "exec"), scope)
    # reverse: a b c => c b a (the synthetic task's answer, read off the rule, not the code)
    assert scope["out"].texts[0].startswith(" c b a"), scope["out"].texts[0]
    assert printed.getvalue().startswith(" c b a")
    assert all(t.startswith(" z y x") for t in scope["grid"].texts)
    assert scope["outs"].texts[1].startswith(" g f e d"), scope["outs"].texts[1]
    assert scope["out"].compile_time >= 0 and scope["out"].wall_time > 0


def test_string_prompts_get_bos_like_ids():
    import nemodiff_jax as nd

    model = nd.load("embedded")
    text = "reverse: a b c =>"
    ids = [model.config.bos_token_id, *model.tokenizer.hf.encode(text, add_special_tokens=False).ids]
    assert model.tokenizer.encode_prompt(text) == ids
    assert model.tokenizer.encode_prompt("<bos>" + text) == ids  # no second BOS
    a = nd.generate(model, [text], mode="ar", max_new_tokens=8)
    b = nd.generate(model, [ids], mode="ar", max_new_tokens=8)
    assert a.tokens == b.tokens


def test_readme_infill_example():
    import nemodiff_jax as nd

    block = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)[1]
    assert "nd.infill" in block
    scope: dict = {"nd": nd, "model": nd.load("embedded")}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(block, str(README), "exec"), scope)
    assert scope["fill"].texts == [" d c"]  # reverse: a b c d => d c | b a
    assert scope["rev"].changed == [[]] and scope["rev"].tokens == scope["fill"].canvas
