"""One record (messages / ShareGPT / Alpaca) -> a validated conversation ready for the chat template.

Every problem is an `InvalidRecord` whose message starts with the record's location (`file:line`).
A conversation that would train on nothing is not an error but a `NothingToTrain` (dropped, counted).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from megatron_sft.errors import UserError

ROLES = ("system", "user", "assistant", "tool")
_SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "tool": "tool",
    "observation": "tool",
    "function_response": "tool",
    "function_call": "assistant",
}
# Keys passed on to the chat template; anything else in a message (ids, timestamps) is not template input.
_TEMPLATE_KEYS = ("role", "content", "reasoning_content", "tool_calls", "name", "tool_call_id")
_SKIP_HINT = "fix the record or pass --skip-invalid to skip and count such records"


class InvalidRecord(UserError):
    """A record that cannot be used; `reason` is the short key it is counted under with --skip-invalid."""

    def __init__(self, where: str, problem: str, reason: str):
        self.where, self.problem, self.reason = where, problem, reason
        super().__init__(f"{where}: {problem}; {_SKIP_HINT}")

    def __reduce__(self):  # keep the fields across worker processes
        return (InvalidRecord, (self.where, self.problem, self.reason))


class NothingToTrain(Exception):
    """A valid conversation with no supervised turn; dropped and counted under `reason`."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


@dataclass
class Conversation:
    messages: list[dict]  # what the chat template receives
    train: list[bool]  # per message: is this turn supervised
    tools: list | None = None


def to_conversation(record, where: str, unmask_user: bool = False) -> Conversation:
    """Detect the format of `record`, validate it and return the conversation."""
    if not isinstance(record, dict):
        raise InvalidRecord(where, f"a record must be a JSON object, got {type(record).__name__}", "not_an_object")
    if "messages" in record:
        messages = record["messages"]
    elif "conversations" in record:
        messages = _from_sharegpt(record, where)
    elif "instruction" in record and "output" in record:
        messages = _from_alpaca(record, where)
    else:
        keys = ", ".join(sorted(map(str, record))) or "none"
        raise InvalidRecord(
            where,
            f"no 'messages' (or ShareGPT 'conversations', or Alpaca 'instruction'+'output'); keys: {keys}",
            "missing_messages",
        )
    unmask = record.get("unmask", False)
    if not isinstance(unmask, bool):
        raise InvalidRecord(where, f"'unmask' must be true or false, got {unmask!r}", "bad_field")
    tools = record.get("tools")
    if isinstance(tools, str):
        tools = _parse_json(tools, where, "'tools'")
    if tools is not None and not isinstance(tools, list):
        raise InvalidRecord(where, "'tools' must be a list of tool schemas", "bad_field")
    clean, train = _validate_messages(messages, where, unmask or unmask_user)
    if "assistant" not in {m["role"] for m in clean}:
        raise NothingToTrain("no_assistant_turn")
    if not any(train):
        raise NothingToTrain("no_supervised_turn")
    return Conversation(clean, train, tools or None)


def _validate_messages(messages, where: str, unmask_user: bool) -> tuple[list[dict], list[bool]]:
    if not isinstance(messages, list):
        raise InvalidRecord(where, f"'messages' must be a list, got {type(messages).__name__}", "bad_messages")
    if not messages:
        raise InvalidRecord(where, "empty conversation (no messages)", "empty_conversation")
    clean, train = [], []
    for i, msg in enumerate(messages):
        at = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise InvalidRecord(where, f"{at} must be an object with 'role' and 'content'", "bad_messages")
        role = msg.get("role")
        if role not in ROLES:
            raise InvalidRecord(where, f"unknown role {role!r} in {at}; roles are {', '.join(ROLES)}", "unknown_role")
        content = msg.get("content")
        if content is None and role == "assistant" and msg.get("tool_calls"):
            content = ""  # OpenAI style: a pure tool-call turn has no text
        if not isinstance(content, str):
            raise InvalidRecord(
                where, f"{at}.content must be a string, got {type(content).__name__}", "non_string_content"
            )
        out = {k: msg[k] for k in _TEMPLATE_KEYS if k in msg and msg[k] is not None}
        out["content"] = content
        _check_optional_fields(out, where, at)
        flag = msg.get("train")
        if flag is not None and not isinstance(flag, bool):
            raise InvalidRecord(where, f"{at}.train must be true or false", "bad_field")
        if flag and role in ("system", "tool"):
            raise InvalidRecord(where, f"{at}: {role} turns are never trained on; remove 'train'", "bad_field")
        default = role == "assistant" or (role == "user" and unmask_user)
        clean.append(out)
        train.append(default if flag is None else flag)
    return clean, train


def _check_optional_fields(msg: dict, where: str, at: str) -> None:
    if "reasoning_content" in msg and not isinstance(msg["reasoning_content"], str):
        raise InvalidRecord(where, f"{at}.reasoning_content must be a string", "non_string_content")
    calls = msg.get("tool_calls")
    if calls is None:
        return
    if msg["role"] != "assistant" or not isinstance(calls, list):
        raise InvalidRecord(where, f"{at}.tool_calls must be a list on an assistant turn", "bad_tool_calls")
    for call in calls:
        fn = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise InvalidRecord(where, f"{at}.tool_calls entries need function.name (a string)", "bad_tool_calls")
        if not isinstance(fn.get("arguments", {}), (dict, str)):
            raise InvalidRecord(where, f"{at}.tool_calls arguments must be an object or a string", "bad_tool_calls")


def _from_sharegpt(record: dict, where: str) -> list:
    turns = record["conversations"]
    if not isinstance(turns, list):
        raise InvalidRecord(where, "'conversations' must be a list of {from, value}", "bad_messages")
    messages = []
    if isinstance(record.get("system"), str) and record["system"]:
        messages.append({"role": "system", "content": record["system"]})
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn:
            raise InvalidRecord(where, f"conversations[{i}] must be an object with 'from' and 'value'", "bad_messages")
        role = _SHAREGPT_ROLES.get(turn["from"])
        if role is None:
            known = ", ".join(sorted(_SHAREGPT_ROLES))
            raise InvalidRecord(
                where, f"unknown role {turn['from']!r} in conversations[{i}]; use {known}", "unknown_role"
            )
        msg = {"role": role, "content": turn.get("value")}
        if turn["from"] == "function_call":
            call = (
                _parse_json(msg["content"], where, f"conversations[{i}].value")
                if isinstance(msg["content"], str)
                else None
            )
            if not isinstance(call, dict):
                raise InvalidRecord(
                    where, f"conversations[{i}]: function_call value must be a JSON object", "bad_tool_calls"
                )
            msg = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": call}]}
        if "train" in turn:
            msg["train"] = turn["train"]
        messages.append(msg)
    return messages


def _from_alpaca(record: dict, where: str) -> list:
    parts = {k: record.get(k) for k in ("system", "instruction", "input", "output")}
    for key, value in parts.items():
        if value is not None and not isinstance(value, str):
            raise InvalidRecord(where, f"'{key}' must be a string, got {type(value).__name__}", "non_string_content")
    prompt = parts["instruction"] + (f"\n\n{parts['input']}" if parts["input"] else "")
    messages = [{"role": "system", "content": parts["system"]}] if parts["system"] else []
    return messages + [{"role": "user", "content": prompt}, {"role": "assistant", "content": parts["output"]}]


def _parse_json(text: str, where: str, what: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidRecord(where, f"{what} is not valid JSON ({e.msg})", "bad_json") from None
