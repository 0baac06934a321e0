"""Prompt sources (--prompt, --prompts-file, defaults), rendering, stop tokens and sampling rules."""

from __future__ import annotations

import json

import pytest
import torch

from megatron_sft.errors import UserError
from megatron_sft.inference.prompts import DEFAULT_PROMPTS, Prompt, load_prompts, read_prompts_file, render_prompt
from megatron_sft.inference.sampling import SamplingSettings, choose_tokens


def _args(**kw):
    from megatron_sft.config import RunConfig

    return RunConfig.from_values(kw)


def test_prompts_from_flags_then_file_and_defaults(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("first line\n\n  second line  \n")
    prompts = load_prompts(_args(prompt=["a", "b"], prompts_file=str(path)))
    assert [p.messages[-1]["content"] for p in prompts] == ["a", "b", "first line", "  second line"]
    assert [p.source for p in prompts] == ["--prompt #1", "--prompt #2", f"{path}:1", f"{path}:3"]
    assert [p.messages[0]["content"] for p in load_prompts(_args())] == list(DEFAULT_PROMPTS)


def test_jsonl_messages_and_trailing_answer_kept_as_reference(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                          {"role": "assistant", "content": "gold"}]},
            {"messages": [{"role": "user", "content": "only"}]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    first, second = read_prompts_file(path)
    assert first.messages == rows[0]["messages"][:2] and first.reference == "gold"
    assert second.messages == rows[1]["messages"] and second.reference is None


@pytest.mark.parametrize("line,expected", [
    ('{"messages": [{"role": "user", "content": "x"}', "not valid JSON"),
    ('{"text": "x"}', 'expected an object with "messages"'),
    ('{"messages": []}', "non-empty list"),
    ('{"messages": [{"role": "robot", "content": "x"}]}', "messages[0] must be"),
    ('{"messages": [{"role": "assistant", "content": "x"}]}', "nothing to answer"),
])
def test_malformed_prompt_line_names_file_and_line(tmp_path, line, expected):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "fine"}]}\n' + line + "\n")
    with pytest.raises(UserError) as err:
        read_prompts_file(path)
    message = str(err.value)
    assert message.startswith(f"{path}:2: ") and expected in message and "\n" not in message


def test_missing_or_empty_prompts_file(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_prompts(_args(prompts_file=str(tmp_path / "nope.txt")))
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(UserError, match="no prompts"):
        load_prompts(_args(prompts_file=str(tmp_path / "blank.txt")))


def test_render_applies_chat_template_and_thinking_switch(tiny_models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["qwen3"])
    prompt = Prompt([{"role": "user", "content": "hi"}], "x")
    off = tok.decode(render_prompt(prompt, tok, chat_template=True, enable_thinking=False))
    on = tok.decode(render_prompt(prompt, tok, chat_template=True, enable_thinking=True))
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") and "<think>" not in on
    assert tok.decode(render_prompt(prompt, tok, chat_template=False, enable_thinking=False)) == "hi"
    llama = AutoTokenizer.from_pretrained(tiny_models["llama3"])
    text = llama.decode(render_prompt(prompt, llama, chat_template=True, enable_thinking=False))
    assert text.startswith("<|begin_of_text|>") and text.count("<|begin_of_text|>") == 1


def test_stop_tokens_come_from_generation_config_tokenizer_and_template(tiny_models):
    from transformers import AutoTokenizer

    from megatron_sft.inference.tokens import real_vocab_size, stop_token_ids

    for family, names in (("qwen3", {"<|im_end|>", "<|endoftext|>"}), ("llama3", {"<|eot_id|>", "<|end_of_text|>"})):
        tok = AutoTokenizer.from_pretrained(tiny_models[family])
        assert set(tok.convert_ids_to_tokens(stop_token_ids(tok, tiny_models[family]))) == names
        assert real_vocab_size(tok, tiny_models[family]) == 512 > len(tok)


def test_greedy_and_degenerate_sampling_pick_the_argmax():
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(0))
    best = logits.argmax(-1)
    gen = torch.Generator().manual_seed(1)
    assert torch.equal(choose_tokens(logits, SamplingSettings(), None), best)
    assert torch.equal(choose_tokens(logits, SamplingSettings(temperature=1.0, top_k=1), gen), best)
    assert torch.equal(choose_tokens(logits, SamplingSettings(temperature=1.0, top_p=1e-6), gen), best)


def test_sampling_respects_top_k_top_p_and_seed():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0]]).expand(4000, -1)
    settings = SamplingSettings(temperature=1.0, top_k=3)
    picks = choose_tokens(logits, settings, torch.Generator().manual_seed(0))
    assert set(picks.tolist()) == {0, 1, 2}
    again = choose_tokens(logits, settings, torch.Generator().manual_seed(0))
    assert torch.equal(picks, again)
    probs = torch.softmax(logits[0], -1)
    assert probs[0] < 0.8 <= probs[0] + probs[1]  # so top_p 0.8 keeps exactly tokens 0 and 1
    picks = choose_tokens(logits, SamplingSettings(temperature=1.0, top_p=0.8), torch.Generator().manual_seed(0))
    assert set(picks.tolist()) == {0, 1}
    share = (picks == 0).float().mean().item()
    assert abs(share - (probs[0] / (probs[0] + probs[1])).item()) < 0.03


@pytest.mark.parametrize("kw,flag", [({"temperature": -1.0}, "--temperature"), ({"top_k": 0}, "--top-k"),
                                     ({"top_p": 1.5}, "--top-p")])
def test_bad_sampling_settings(kw, flag):
    with pytest.raises(UserError, match=flag):
        SamplingSettings(**kw).check()
