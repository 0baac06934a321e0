"""One record -> a validated conversation ready for the chat template.

Formats: `messages`, ShareGPT `conversations`, and the single-turn Alpaca, Dolly, OpenOrca,
prompt/completion (TRL) and input/output (Megatron-Bridge) records; detected per record, or forced
with `--data-format`.

Every problem is an `InvalidRecord` whose message starts with the record's location (`file:line`).
A conversation that would train on nothing is not an error but a `NothingToTrain` (dropped, counted).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from megatron_sft.config import DATA_FORMATS
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


@dataclass(frozen=True)
class _SingleTurn:
    """A one-question, one-answer format: which fields make the system, user and assistant turns."""

    user: tuple[str, ...]  # joined by a blank line into the user turn; only the first is required
    assistant: str
    system: str = "system"
    excludes: str | None = None  # a field whose presence means another format (detection only)

    @property
    def required(self) -> tuple[str, str]:
        return (self.user[0], self.assistant)


_SINGLE_TURN = {
    "alpaca": _SingleTurn(("instruction", "input"), "output"),
    "dolly": _SingleTurn(("instruction", "context"), "response"),
    "openorca": _SingleTurn(("question",), "response", system="system_prompt"),
    "prompt_completion": _SingleTurn(("prompt",), "completion"),
    # Alpaca has 'input' and 'output' too; its 'instruction' tells the two apart.
    "input_output": _SingleTurn(("input",), "output", excludes="instruction"),
}
_CHAT_FIELDS = {"messages": "messages", "sharegpt": "conversations"}
# config.py names the formats for the flag and the config checks (it sits below data/); they are these.
assert DATA_FORMATS == ("auto", *_CHAT_FIELDS, *_SINGLE_TURN), DATA_FORMATS


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
    weights: list[float] | None = None  # per message: its tokens' loss weight ("weight"); None: all 1


def to_conversation(record, where: str, unmask_user: bool = False, data_format: str = "auto",
                    loss_turns: str = "all") -> Conversation:
    """Detect (or take `data_format`), validate and return the conversation of `record`. `loss_turns` "last": of
    the assistant turns without a "loss" of their own, only the last is trained on."""
    if not isinstance(record, dict):
        raise InvalidRecord(where, f"a record must be a JSON object, got {type(record).__name__}", "not_an_object")
    fmt = detect_format(record, where) if data_format == "auto" else _check_forced(record, where, data_format)
    if fmt == "messages":
        messages = record["messages"]
    elif fmt == "sharegpt":
        messages = _from_sharegpt(record, where)
    else:
        messages = _from_single_turn(record, where, _SINGLE_TURN[fmt])
    unmask = record.get("unmask", False)
    if not isinstance(unmask, bool):
        raise InvalidRecord(where, f"'unmask' must be true or false, got {unmask!r}", "bad_field")
    tools = record.get("tools")
    if isinstance(tools, str):
        tools = _parse_json(tools, where, "'tools'")
    if tools is not None and not isinstance(tools, list):
        raise InvalidRecord(where, "'tools' must be a list of tool schemas", "bad_field")
    clean, train, weights = _validate_messages(messages, where, unmask or unmask_user)
    if loss_turns == "last":
        train = _last_assistant_turn_only(messages, clean, train)
    if "assistant" not in {m["role"] for m in clean}:
        raise NothingToTrain("no_assistant_turn")
    if not any(train):
        raise NothingToTrain("no_supervised_turn")
    weighted = any(w != 1.0 for w, t in zip(weights, train) if t)
    return Conversation(clean, train, tools or None, weights if weighted else None)


def _validate_messages(messages, where: str, unmask_user: bool) -> tuple[list[dict], list[bool], list[float]]:
    if not isinstance(messages, list):
        raise InvalidRecord(where, f"'messages' must be a list, got {type(messages).__name__}", "bad_messages")
    if not messages:
        raise InvalidRecord(where, "empty conversation (no messages)", "empty_conversation")
    clean, train, weights = [], [], []
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
        flag, weight = _own_flag(msg, where, at), _own_weight(msg, where, at)
        if weight is not None:  # "weight": 0 is "loss": false; a positive weight trains the turn
            if flag is not None and flag != (weight > 0):
                raise InvalidRecord(where, f"{at} has '{_flag_key(msg)}': {str(flag).lower()} and 'weight': {weight}; "
                                           "keep one", "bad_field")
            flag = weight > 0
        if flag and role in ("system", "tool"):
            raise InvalidRecord(where, f"{at}: {role} turns are never trained on; remove '{_flag_key(msg)}'",
                                "bad_field")
        default = role == "assistant" or (role == "user" and unmask_user)
        clean.append(out)
        train.append(default if flag is None else flag)
        weights.append(1.0 if weight is None else weight)
    return clean, train, weights


def _flag_key(msg: dict) -> str:
    return "loss" if "loss" in msg else "train" if "train" in msg else "weight"


def _own_weight(msg: dict, where: str, at: str) -> float | None:
    """A message's "weight": a finite number >= 0 scaling its tokens in the weighted mean loss; None: absent."""
    weight = msg.get("weight")
    if weight is None:
        return None
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise InvalidRecord(where, f"{at}.weight must be a number >= 0 (0: not trained on), got {weight!r}",
                            "bad_field")
    return float(weight)


def _own_flag(msg: dict, where: str, at: str) -> bool | None:
    """A message's own choice: "loss" (ms-swift / TRL's name) or "train" (true or false); None: the default."""
    if "loss" in msg and "train" in msg:
        raise InvalidRecord(where, f"{at} has both 'loss' and 'train'; keep one", "bad_field")
    key = _flag_key(msg)
    flag = msg.get(key) if key != "weight" else None
    if flag is not None and not isinstance(flag, bool):
        raise InvalidRecord(where, f"{at}.{key} must be true or false, got {flag!r}", "bad_field")
    return flag


def _last_assistant_turn_only(messages: list, clean: list[dict], train: list[bool]) -> list[bool]:
    """--loss-turns last: assistant turns without an own "loss"/"train" are trained on only if they are the last
    assistant turn (LLaMA-Factory's mask_history)."""
    last = max(i for i, m in enumerate(clean) if m["role"] == "assistant")
    return [t if (clean[i]["role"] != "assistant" or i == last or _flag_key(messages[i]) in messages[i]) else False
            for i, t in enumerate(train)]


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
        for key in ("loss", "train", "weight"):  # a turn's own loss control, as on a message
            if key in turn:
                msg[key] = turn[key]
        messages.append(msg)
    return messages


def detect_format(record: dict, where: str) -> str:
    """The format of one record. Chat fields win (as before); single-turn formats must match exactly one."""
    for fmt, key in _CHAT_FIELDS.items():
        if key in record:
            return fmt
    # A null field counts as absent: columnar sources (Parquet, datasets) fill missing fields with None.
    present = {k for k, v in record.items() if v is not None}
    found = [
        fmt
        for fmt, spec in _SINGLE_TURN.items()
        if present.issuperset(spec.required) and (spec.excludes is None or spec.excludes not in present)
    ]
    if len(found) > 1:  # guessing would silently train on the wrong fields
        raise InvalidRecord(
            where, f"fields fit several formats ({', '.join(found)}); pick one with --data-format", "ambiguous_format"
        )
    if not found:
        raise InvalidRecord(
            where,
            "no 'messages' (or ShareGPT 'conversations', Alpaca 'instruction'+'output', Dolly "
            "'instruction'+'response', OpenOrca 'question'+'response', 'prompt'+'completion', "
            f"'input'+'output'); {_describe_keys(record)}",
            "missing_messages",
        )
    return found[0]


def _check_forced(record: dict, where: str, fmt: str) -> str:
    if fmt not in DATA_FORMATS:
        raise UserError(f"--data-format {fmt!r} is not one of {', '.join(DATA_FORMATS)}")
    needed = (_CHAT_FIELDS[fmt],) if fmt in _CHAT_FIELDS else _SINGLE_TURN[fmt].required
    missing = [k for k in needed if record.get(k) is None]
    if missing:
        raise InvalidRecord(
            where,
            f"--data-format {fmt} needs {' and '.join(map(repr, needed))}; missing "
            f"{', '.join(map(repr, missing))} ({_describe_keys(record)})",
            "missing_fields",
        )
    return fmt


def _describe_keys(record: dict) -> str:
    keys = ", ".join(sorted(str(k) for k, v in record.items() if v is not None)) or "none"
    nulls = ", ".join(sorted(str(k) for k, v in record.items() if v is None))
    return f"keys: {keys}" + (f"; null: {nulls}" if nulls else "")


def _from_single_turn(record: dict, where: str, spec: _SingleTurn) -> list:
    parts = {k: record.get(k) for k in (spec.system, *spec.user, spec.assistant)}
    for key, value in parts.items():
        required = key in spec.required
        if (value is not None or required) and not isinstance(value, str):
            raise InvalidRecord(where, f"'{key}' must be a string, got {type(value).__name__}", "non_string_content")
    # Optional parts (Alpaca's input, Dolly's context) follow the first after a blank line when non-empty.
    prompt = "\n\n".join(parts[k] for k in spec.user if parts[k] or k == spec.user[0])
    messages = [{"role": "system", "content": parts[spec.system]}] if parts[spec.system] else []
    return messages + [{"role": "user", "content": prompt}, {"role": "assistant", "content": parts[spec.assistant]}]


def _parse_json(text: str, where: str, what: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidRecord(where, f"{what} is not valid JSON ({e.msg})", "bad_json") from None
