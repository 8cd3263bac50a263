"""The infilling cases of train/ablate_embedded: spans of 4-8 answer tokens, cut as the issue says."""

from __future__ import annotations


def test_infill_cases_cut_the_answer_as_specified():
    from tokenizers import Tokenizer

    from nemodiff_jax.data.tasks import build_task_dataset
    from nemodiff_jax.data.tokenizer_train import BOS_ID, EOS_ID, TOKENIZER_DIR
    from nemodiff_jax.train.ablate_embedded import infill_cases

    tok = Tokenizer.from_file(str(TOKENIZER_DIR / "tokenizer.json"))
    examples = build_task_dataset("test", 24, seed=0)
    cases = infill_cases(tok, examples, seed=0)
    assert len(cases) == len(examples)
    for (prompt, answer, task), (pre, span, suf, t) in zip(examples, cases):
        assert t == task
        p = [BOS_ID] + tok.encode(prompt, add_special_tokens=False).ids
        a = tok.encode(answer, add_special_tokens=False).ids
        head = pre[len(p):]
        assert pre[:len(p)] == p and len(head) >= 1  # prompt + a non-empty answer head
        assert 4 <= len(span) <= 8 and EOS_ID not in span
        assert 1 <= len(suf) <= 16
        assert head + span + suf == a[:len(head) + len(span) + len(suf)]
        assert len(suf) == min(16, len(a) - len(head) - len(span))
    assert cases == infill_cases(tok, examples, seed=0)  # deterministic
