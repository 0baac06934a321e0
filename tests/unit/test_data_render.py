"""Supervised text, turn by turn, for each tiny template and each record format.

The expected strings are written out here from the record and the template's documented behaviour
(tiny Qwen3: ChatML, think blocks on assistant turns after the last user query, tool calls as
<tool_call> JSON; tiny Llama 3: header / content|trim / <|eot_id|>). They are compared with the text
of the labels that carry loss in the final packed tensors, so rendering, offsets, label shift and
loss mask are checked together.
"""

from __future__ import annotations

import pytest

from megatron_sft.data.batch import build_pack
from megatron_sft.data.pipeline import ChunkProcessor
from megatron_sft.data.render import ChatRenderer
from megatron_sft.data.sources import RawChunk
from megatron_sft.errors import UserError
from megatron_sft.tiny import make_tiny_tokenizer

IM_END, EOT = "<|im_end|>", "<|eot_id|>"


def loss_runs(family: str, record: dict, seq_length: int = 1024, **options) -> tuple[list[str], object]:
    """Texts of the maximal runs of consecutive labels with loss, and the chunk's statistics."""
    tok = make_tiny_tokenizer(family)
    chat_template = options.pop("chat_template", None)
    result = ChunkProcessor(tok, chat_template, seq_length, **options)(RawChunk(0, "t.jsonl", False, [(1, record)]))
    assert result.lengths.tolist() == [len(result.tokens)], result.stats.to_dict()
    pack = build_pack([(result.tokens, result.supervised)], seq_length, tok.pad_token_id)
    labels, mask = pack["labels"].tolist(), pack["loss_mask"].tolist()
    runs, current = [], []
    for label, m in zip(labels, mask):
        if m:
            current.append(label)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tok.decode(r, skip_special_tokens=False) for r in runs], result.stats


def msgs(*pairs, **extra):
    return {"messages": [{"role": r, "content": c} for r, c in pairs], **extra}


# -- Qwen3 ------------------------------------------------------------------------------------------
def test_qwen3_multi_turn_masks_system_and_user():
    record = msgs(
        ("system", "Be brief."),
        ("user", "hi there"),
        ("assistant", "hello"),
        ("user", "weather in paris?"),
        ("assistant", "It is sunny."),
    )
    runs, stats = loss_runs("qwen3", record)
    # Earlier assistant turns: content only. The final one gets an empty think block from the template.
    assert runs == ["hello" + IM_END, "<think>\n\n</think>\n\nIt is sunny." + IM_END]
    assert stats.supervised_tokens == sum(
        len(make_tiny_tokenizer("qwen3")(r, add_special_tokens=False)["input_ids"]) for r in runs
    )


def test_qwen3_reasoning_tool_calls_and_dropped_reasoning():
    record = {
        "messages": [
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer", "reasoning_content": "old thoughts"},
            {"role": "user", "content": "weather in paris?"},
            {
                "role": "assistant",
                "content": "",
                "reasoning_content": "call the tool",
                "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "paris"}}}
                ],
            },
            {"role": "tool", "content": "sunny, 21"},
            {"role": "assistant", "content": "<think>\nread result\n</think>\n\nSunny, 21 degrees."},
        ]
    }
    runs, stats = loss_runs("qwen3", record)
    assert runs == [
        "first answer" + IM_END,  # before the last user query: Qwen3 drops its reasoning
        '<think>\ncall the tool\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "paris"}}'
        "\n</tool_call>" + IM_END,
        "<think>\nread result\n</think>\n\nSunny, 21 degrees." + IM_END,
    ]
    assert dict(stats.template_dropped) == {"reasoning": 1}


def test_qwen3_unmask_user_record_flag_global_flag_and_per_message():
    record = msgs(
        ("system", "sys"),
        ("user", "question one"),
        ("assistant", "answer one"),
        ("user", "question two"),
        ("assistant", "answer two"),
    )
    expected = [
        "question one" + IM_END,
        "answer one" + IM_END,
        "question two" + IM_END,
        "<think>\n\n</think>\n\nanswer two" + IM_END,
    ]
    assert loss_runs("qwen3", {**record, "unmask": True})[0] == expected
    assert loss_runs("qwen3", record, unmask_user=True)[0] == expected
    per_message = {"messages": [dict(m) for m in record["messages"]]}
    per_message["messages"][3]["train"] = True  # second user turn only
    per_message["messages"][2]["train"] = False  # and not the first answer
    assert loss_runs("qwen3", per_message)[0] == [
        "question two" + IM_END,
        "<think>\n\n</think>\n\nanswer two" + IM_END,
    ]


def test_qwen3_sharegpt_and_alpaca():
    sharegpt = {
        "conversations": [
            {"from": "system", "value": "sys"},
            {"from": "human", "value": "hi"},
            {"from": "gpt", "value": "hello"},
            {"from": "human", "value": "bye"},
            {"from": "gpt", "value": "goodbye"},
        ]
    }
    assert loss_runs("qwen3", sharegpt)[0] == ["hello" + IM_END, "<think>\n\n</think>\n\ngoodbye" + IM_END]
    alpaca = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}
    assert loss_runs("qwen3", alpaca)[0] == ["<think>\n\n</think>\n\n5" + IM_END]
    # The user turn Alpaca becomes: instruction, blank line, input.
    assert loss_runs("qwen3", alpaca, unmask_user=True)[0][0] == "Add the numbers.\n\n2 and 3" + IM_END


def test_qwen3_eod_mask_loss_keeps_end_of_turn():
    record = msgs(("user", "say <|endoftext|> please"), ("assistant", "ok <|endoftext|> done"))
    runs, _ = loss_runs("qwen3", record, eod_mask_loss=True)
    # The pad/separator token inside the answer loses its loss; <|im_end|> keeps it.
    assert runs == ["<think>\n\n</think>\n\nok ", " done" + IM_END]


# -- Llama 3 ----------------------------------------------------------------------------------------
def test_llama3_multi_turn_and_formats():
    record = msgs(
        ("system", "Be brief."), ("user", "hi"), ("assistant", "  hello  "), ("user", "bye"), ("assistant", "goodbye")
    )
    assert loss_runs("llama3", record)[0] == ["hello" + EOT, "goodbye" + EOT]  # content | trim
    sharegpt = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    assert loss_runs("llama3", sharegpt)[0] == ["hello" + EOT]
    alpaca = {"instruction": "Add.", "input": "2 and 3", "output": "5", "system": "math"}
    assert loss_runs("llama3", alpaca, unmask_user=True)[0] == ["Add.\n\n2 and 3" + EOT, "5" + EOT]


FOUR_TURNS = msgs(("system", "sys"), ("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2"),
                  ("user", "q3"), ("assistant", "a3"), ("user", "q4"), ("assistant", "a4"))


@pytest.mark.parametrize("family,first,last", [
    ("qwen3", "{}" + IM_END, "<think>\n\n</think>\n\n{}" + IM_END), ("llama3", "{}" + EOT, "{}" + EOT)])
def test_loss_turns_last_and_per_message_loss(family, first, last):
    """A 4-turn conversation: --loss-turns last trains on the final answer only; a message's own "loss" (ms-swift
    and TRL's key) wins over it either way; "loss": false drops an answer under the default."""
    answers = [first.format(f"a{k}") for k in (1, 2, 3)] + [last.format("a4")]
    assert loss_runs(family, FOUR_TURNS)[0] == answers
    assert loss_runs(family, FOUR_TURNS, loss_turns="last")[0] == answers[3:]
    own = {"messages": [dict(m) for m in FOUR_TURNS["messages"]]}
    own["messages"][4]["loss"] = True  # a2 kept under --loss-turns last
    own["messages"][8]["loss"] = False  # a4 dropped
    own["messages"][3]["loss"] = True  # and the user turn q2 trained
    assert loss_runs(family, own, loss_turns="last")[0] == [first.format("q2"), answers[1]]
    assert loss_runs(family, own)[0] == [answers[0], first.format("q2"), answers[1], answers[2]]


def test_a_bad_loss_key_is_refused():
    from megatron_sft.data.formats import InvalidRecord, to_conversation

    with pytest.raises(InvalidRecord, match=r"messages\[2\]\.loss must be true or false, got 0\.5"):
        to_conversation({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                                      {"role": "assistant", "content": "b", "loss": 0.5}]}, "t.jsonl:1")
    with pytest.raises(InvalidRecord, match="has both 'loss' and 'train'"):
        to_conversation({"messages": [{"role": "user", "content": "q"},
                                      {"role": "assistant", "content": "a", "loss": True, "train": True}]}, "t.jsonl:1")


def weighted_runs(family: str, record: dict, **options) -> list[tuple[str, float]]:
    """(text, weight) of the maximal runs of labels with one loss weight, as build_pack lays them out."""
    tok = make_tiny_tokenizer(family)
    result = ChunkProcessor(tok, None, 1024, **options)(RawChunk(0, "t.jsonl", False, [(1, record)]))
    pack = build_pack([(result.tokens, result.supervised)], 1024, tok.pad_token_id)
    runs: list[tuple[list[int], float]] = []
    for label, w in zip(pack["labels"].tolist(), pack["loss_mask"].tolist()):
        if w and runs and runs[-1][1] == w and runs[-1][2]:
            runs[-1][0].append(label)
        else:
            runs.append(([label], w, bool(w)))
    return [(tok.decode(r, skip_special_tokens=False), w) for r, w, on in runs if on]


@pytest.mark.parametrize("family,first,last", [
    ("qwen3", "{}" + IM_END, "<think>\n\n</think>\n\n{}" + IM_END), ("llama3", "{}" + EOT, "{}" + EOT)])
def test_a_messages_weight_is_its_tokens_loss_weight(family, first, last):
    """A message's "weight" lands on exactly its span's labels; 0 drops the turn; --loss-turns last keeps a turn
    with a weight of its own; without weights the mask stays 0/1 (and the cache keeps no weights)."""
    record = {"messages": [dict(m) for m in FOUR_TURNS["messages"]]}
    record["messages"][2]["weight"] = 0.25
    record["messages"][4]["weight"] = 0
    record["messages"][6]["weight"] = 3
    assert weighted_runs(family, record) == [(first.format("a1"), 0.25), (first.format("a3"), 3.0),
                                             (last.format("a4"), 1.0)]
    assert weighted_runs(family, record, loss_turns="last") == [(first.format("a1"), 0.25),
                                                                (first.format("a3"), 3.0), (last.format("a4"), 1.0)]
    record["messages"][8]["loss"] = False
    record["messages"][1]["weight"] = 2  # a user turn trained on, with its weight
    assert weighted_runs(family, record, loss_turns="last") == [(first.format("q1"), 2.0), (first.format("a1"), 0.25),
                                                                (first.format("a3"), 3.0)]
    tok = make_tiny_tokenizer(family)
    plain = ChunkProcessor(tok, None, 1024)(RawChunk(0, "t.jsonl", False, [(1, FOUR_TURNS)]))
    assert plain.supervised.dtype.name == "uint8"


def test_sharegpt_turns_carry_their_own_loss_control():
    record = {"conversations": [{"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1", "loss": False},
                                {"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2", "weight": 0.5}]}
    assert weighted_runs("llama3", record) == [("a2" + EOT, 0.5)]


@pytest.mark.parametrize("message,error", [
    ({"weight": -1}, r"messages\[2\]\.weight must be a number >= 0 \(0: not trained on\), got -1"),
    ({"weight": "2"}, r"messages\[2\]\.weight must be a number >= 0 .*got '2'"),
    ({"weight": True}, r"messages\[2\]\.weight must be a number >= 0 .*got True"),
    ({"weight": float("nan")}, r"messages\[2\]\.weight must be a number >= 0 .*got nan"),
    ({"weight": 2, "loss": False}, r"messages\[2\] has 'loss': false and 'weight': 2.0; keep one"),
    ({"weight": 0, "train": True}, r"messages\[2\] has 'train': true and 'weight': 0.0; keep one"),
])
def test_a_bad_weight_is_refused(message, error):
    from megatron_sft.data.formats import InvalidRecord, to_conversation

    with pytest.raises(InvalidRecord, match=error):
        to_conversation({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                                      {"role": "assistant", "content": "b", **message}]}, "t.jsonl:1")
    with pytest.raises(InvalidRecord, match=r"messages\[0\]: system turns are never trained on; remove 'weight'"):
        to_conversation({"messages": [{"role": "system", "content": "s", "weight": 2},
                                      {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "x")


def test_llama3_tool_calls_and_dropped_content_counted():
    record = {
        "messages": [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": "let me check",
                "reasoning_content": "hmm",
                "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "paris"}}}],
            },
            {"role": "tool", "content": "sunny"},
            {"role": "assistant", "content": "Sunny."},
        ]
    }
    runs, stats = loss_runs("llama3", record)
    assert runs == ['{"name": "get_weather", "parameters": {"city": "paris"}}' + EOT, "Sunny." + EOT]
    # Llama 3 renders neither reasoning nor the text next to a tool call: counted, not silent.
    assert dict(stats.template_dropped) == {"reasoning": 1, "content": 1}


# -- Qwen2.5 ----------------------------------------------------------------------------------------
def test_qwen2_tool_calls_follow_content_and_no_think_blocks():
    record = {
        "messages": [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": "Checking.",
                "reasoning_content": "unused",
                "tool_calls": [{"function": {"name": "get_weather", "arguments": '{"city": "tokyo"}'}}],
            },
            {"role": "tool", "content": "rain"},
            {"role": "assistant", "content": "Rain."},
        ]
    }
    runs, stats = loss_runs("qwen2", record)
    assert runs == [
        'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "tokyo"}}\n</tool_call>' + IM_END,
        "Rain." + IM_END,
    ]
    assert dict(stats.template_dropped) == {"reasoning": 1}  # Qwen2.5 has no reasoning blocks
    sharegpt = {
        "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}],
        "system": "Be nice.",
    }
    assert loss_runs("qwen2", sharegpt, unmask_user=True)[0] == ["hi" + IM_END, "hello" + IM_END]


# -- templates --------------------------------------------------------------------------------------
def test_chat_template_override_and_missing_template(tmp_path):
    custom = tmp_path / "t.jinja"
    custom.write_text(
        "{% for m in messages %}<|im_start|>{{ m.role }}:\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant:\n{% endif %}"
    )
    runs, _ = loss_runs("qwen3", msgs(("user", "hi"), ("assistant", "yo")), chat_template=custom.read_text())
    assert runs == ["yo" + IM_END]
    tok = make_tiny_tokenizer("qwen3")
    tok.chat_template = None
    with pytest.raises(UserError, match="no chat template.*--chat-template"):
        ChatRenderer(tok)


def test_spans_found_alone_equal_spans_found_together():
    tok = make_tiny_tokenizer("qwen3")
    renderer = ChatRenderer(tok)
    from megatron_sft.data.formats import to_conversation

    conv = to_conversation(
        {**msgs(("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d")), "unmask": True}, "x"
    )
    together = renderer.render(conv).spans
    alone = [renderer._span_alone(renderer.render(conv).text, conv, i) for i in range(4)]
    assert together == alone
    assert [renderer.render(conv).text[a:b] for a, b in alone] == [
        "a" + IM_END,
        "b" + IM_END,
        "c" + IM_END,
        "<think>\n\n</think>\n\nd" + IM_END,
    ]


def test_end_of_turn_text_inside_content_and_turns_the_template_leaves_out():
    # The literal end-of-turn inside an answer must not end its span early.
    record = msgs(("user", "how do turns end?"), ("assistant", "with <|im_end|> here"))
    assert loss_runs("qwen3", record)[0] == ["<think>\n\n</think>\n\nwith <|im_end|> here" + IM_END]
    # A template that renders only the last assistant turn: the earlier one has no span and is counted.
    only_last = (
        "{% for m in messages %}{% if m.role != 'assistant' or loop.last %}"
        "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    record = msgs(("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2"))
    runs, stats = loss_runs("qwen3", record, chat_template=only_last)
    assert runs == ["a2" + IM_END] and dict(stats.template_dropped) == {"content": 1}
