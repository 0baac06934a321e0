"""Prompts for generation: --prompt, --prompts-file (JSONL chat messages or plain text lines), or defaults.

Reading and checking is cheap (no torch, no transformers) so a bad file fails before any model loads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from megatron_sft.config import RunConfig
from megatron_sft.errors import UserError

DEFAULT_PROMPTS = (
    "Give me a short introduction to large language models.",
    "What is the capital of France? Answer in one word.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "Explain tensor parallelism in two sentences.",
)
_ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Prompt:
    """One conversation to continue. `reference`: the assistant reply a JSONL sample ended with, if any."""

    messages: list[dict]
    source: str
    reference: str | None = None


def load_prompts(cfg: RunConfig) -> list[Prompt]:
    """--prompt values first, then --prompts-file; the built-in defaults when neither is given."""
    given = cfg.inference.prompt or []
    prompts = [Prompt([{"role": "user", "content": p}], f"--prompt #{i + 1}") for i, p in enumerate(given)]
    if cfg.inference.prompts_file:
        prompts += read_prompts_file(cfg.inference.prompts_file)
    if not prompts and not cfg.inference.prompts_file:
        prompts = [Prompt([{"role": "user", "content": p}], f"default #{i + 1}")
                   for i, p in enumerate(DEFAULT_PROMPTS)]
    if not prompts:
        raise UserError(f"--prompts-file {cfg.inference.prompts_file}: no prompts in the file (only blank lines)")
    return prompts


def _is_jsonl(path: Path, lines: list[str]) -> bool:
    if path.suffix in (".jsonl", ".json"):
        return True
    first = next((line.strip() for line in lines if line.strip()), "")
    return first.startswith("{")


def read_prompts_file(path_name: str | Path) -> list[Prompt]:
    """A .jsonl file (or one whose first line is a JSON object): one {"messages": [...]} per line.
    Anything else: every non-blank line is one user message."""
    path = Path(path_name)
    if not path.is_file():
        raise UserError(f"--prompts-file {path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise UserError(f"--prompts-file {path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    jsonl = _is_jsonl(path, lines)
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        if jsonl:
            prompts.append(_parse_jsonl_line(line, where))
        else:
            prompts.append(Prompt([{"role": "user", "content": line.rstrip()}], where))
    return prompts


def _parse_jsonl_line(line: str, where: str) -> Prompt:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise UserError(f'{where}: not valid JSON ({err.msg} at column {err.colno}); each line must be an object '
                        'with "messages"') from None
    if not isinstance(record, dict) or "messages" not in record:
        raise UserError(f'{where}: expected an object with "messages" (a list of {{"role", "content"}})')
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise UserError(f'{where}: "messages" must be a non-empty list of {{"role", "content"}} objects')
    for i, message in enumerate(messages):
        ok = isinstance(message, dict) and message.get("role") in _ROLES and isinstance(message.get("content"), str)
        if not ok:
            raise UserError(f'{where}: messages[{i}] must be {{"role": one of {"/".join(_ROLES)}, "content": text}}')
    # A training sample ends with the answer: generate in its place and keep it for comparison.
    reference = None
    if messages[-1]["role"] == "assistant":
        reference, messages = messages[-1]["content"], messages[:-1]
    if not messages:
        raise UserError(f"{where}: only an assistant message; nothing to answer")
    return Prompt(list(messages), where, reference)


def render_prompt(prompt: Prompt, tokenizer, *, chat_template: bool, enable_thinking: bool) -> list[int]:
    """Token ids of the prompt: the chat template with the assistant turn opened, or the raw text."""
    if chat_template and tokenizer.chat_template:
        # Templates without a thinking switch ignore the variable, so it is always passed.
        text = tokenizer.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True,
                                             enable_thinking=enable_thinking)
        return list(tokenizer.encode(text, add_special_tokens=False))
    text = "\n\n".join(m["content"] for m in prompt.messages)
    return list(tokenizer.encode(text, add_special_tokens=True))
