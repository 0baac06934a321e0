"""Pieces of the embedded default that need no model run: tokenizer, task split, the before/after report."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.workflow.helpers import REPO


def test_char_tokenizer_is_one_token_per_character_and_survives_a_reload(tmp_path):
    from transformers import AutoTokenizer

    from megatron_sft.tiny.charlevel import make_char_tokenizer, reversal_chat

    make_char_tokenizer().save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    text = tok.apply_chat_template(reversal_chat("abc"), tokenize=False)
    assert text == "<|im_start|>user\nreverse: abc<|im_end|>\n<|im_start|>assistant\ncba<|im_end|>\n"
    ids = tok(text)["input_ids"]
    specials = text.count("<|im_start|>") + text.count("<|im_end|>")
    plain = text.replace("<|im_start|>", "").replace("<|im_end|>", "")
    assert len(ids) == len(plain) + specials  # one token per character, one per special token
    assert tok.decode(ids) == text
    assert tok.eos_token == "<|im_end|>" and tok.convert_tokens_to_ids("<|im_end|>") == ids[-2]


def test_heldout_words_never_appear_in_training():
    from megatron_sft.tiny.charlevel import reversal_words

    train, heldout = reversal_words(4000, 50, seed=0)
    assert len(heldout) == len(set(heldout)) == 50
    assert not set(train) & set(heldout)
    assert all(w != w[::-1] and 3 <= len(w) <= 6 for w in heldout)
    assert {len(w) for w in train} == set(range(1, 7))


def _records(path, answers, references):
    rows = [
        {"messages": [{"role": "user", "content": f"reverse: {ref[::-1]}"}], "completion": answer, "reference": ref}
        for answer, ref in zip(answers, references)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_report_counts_exact_answers_and_enforces_the_minimum(tmp_path):
    refs = ["cba", "fed", "ih", "lkj"]
    before = _records(tmp_path / "b.jsonl", ["", "x", "", "y"], refs)
    after = _records(tmp_path / "a.jsonl", ["cba", "fed", "hi", "lkj"], refs)
    tool = [
        sys.executable,
        str(REPO / "tools" / "make_embedded_default.py"),
        "report",
        "--before",
        str(before),
        "--after",
        str(after),
    ]
    ok = subprocess.run(tool, capture_output=True, text=True, check=True)
    assert "before 0/4 (0%), after 3/4 (75%)" in ok.stdout
    assert "reverse: hi" in ok.stdout and "'hi'" in ok.stdout
    low = subprocess.run([*tool, "--min-exact", "0.9"], capture_output=True, text=True, check=False)
    assert low.returncode == 1 and "below --min-exact 90%" in low.stderr
