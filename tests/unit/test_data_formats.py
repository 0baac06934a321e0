"""Record formats -> conversation: what the chat template receives and which turns train."""

from __future__ import annotations

import pytest

from megatron_sft.data.formats import InvalidRecord, NothingToTrain, to_conversation


def test_messages_keep_template_fields_and_default_training_turns():
    conv = to_conversation(
        {
            "messages": [
                {"role": "system", "content": "s", "id": 7},
                {"role": "user", "content": "u"},
                {
                    "role": "assistant",
                    "content": None,
                    "reasoning_content": "r",
                    "tool_calls": [{"name": "f", "arguments": {}}],
                },
                {"role": "tool", "content": "t", "tool_call_id": "1", "name": None},
            ],
            "tools": '[{"name": "f"}]',
        },
        "x:1",
    )
    assert conv.messages == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "", "reasoning_content": "r", "tool_calls": [{"name": "f", "arguments": {}}]},
        {"role": "tool", "content": "t", "tool_call_id": "1"},
    ]
    assert conv.train == [False, False, True, False] and conv.tools == [{"name": "f"}]


def test_sharegpt_roles_function_calls_and_system():
    conv = to_conversation(
        {
            "system": "sys",
            "conversations": [
                {"from": "human", "value": "q"},
                {"from": "function_call", "value": '{"name": "f", "arguments": {"a": 1}}'},
                {"from": "observation", "value": "42"},
                {"from": "gpt", "value": "a", "train": False},
                {"from": "user", "value": "q2"},
                {"from": "model", "value": "a2"},
            ],
        },
        "x:1",
    )
    assert [m["role"] for m in conv.messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
        "assistant",
    ]
    assert conv.messages[2]["tool_calls"] == [{"type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]
    assert conv.train == [False, False, True, False, False, False, True]


def test_alpaca_with_and_without_input():
    conv = to_conversation({"instruction": "Do it.", "input": "", "output": "Done."}, "x:1")
    assert conv.messages == [{"role": "user", "content": "Do it."}, {"role": "assistant", "content": "Done."}]


@pytest.mark.parametrize(
    "record, reason",
    [
        (
            {"messages": [{"role": "system", "content": "s", "train": True}, {"role": "assistant", "content": "a"}]},
            "bad_field",
        ),
        (
            {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}], "unmask": "yes"},
            "bad_field",
        ),
        (
            {"messages": [{"role": "assistant", "content": "a", "tool_calls": [{"function": {"arguments": {}}}]}]},
            "bad_tool_calls",
        ),
        ({"conversations": [{"from": "alien", "value": "x"}]}, "unknown_role"),
        ({"instruction": "x", "output": 3}, "non_string_content"),
        ([1, 2], "not_an_object"),
    ],
)
def test_invalid_records(record, reason):
    with pytest.raises(InvalidRecord) as err:
        to_conversation(record, "f.jsonl:9")
    assert err.value.reason == reason and str(err.value).startswith("f.jsonl:9: ")


def test_nothing_to_train():
    with pytest.raises(NothingToTrain, match="no_assistant_turn"):
        to_conversation({"messages": [{"role": "user", "content": "u"}]}, "x", unmask_user=True)
