"""The one tokenizer loader (training, generation, MMLU and the data tools) and the one padding-id rule."""

from __future__ import annotations

import re
from pathlib import Path

from megatron_sft.errors import UserError

_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")  # org/name: resolved by transformers (cache or download)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def tokenizer_problem(value: str, flag: str = "--tokenizer-model") -> str | None:
    """What is wrong with a tokenizer location as the user gave it (a local directory with tokenizer files,
    a hub name, or `tiny:<family>`), or None."""
    if value.startswith("tiny:"):
        return None
    path = Path(value).expanduser()
    if not path.exists():
        if _HUB_ID.fullmatch(value):
            return None
        return (f"{flag} {value}: no such directory; give a Hugging Face model or tokenizer directory, or a hub name "
                "such as Qwen/Qwen3-0.6B")
    if not path.is_dir() or not any((path / name).is_file() for name in _TOKENIZER_FILES):
        return (f"{flag} {value}: no tokenizer files there ({', '.join(_TOKENIZER_FILES)}); give the Hugging Face "
                "directory the model came from")
    return None


def load_tokenizer(source: str | None):
    """A fast tokenizer from a directory or hub name, or `tiny:<family>` (megatron_sft.tiny); one-line errors."""
    if not source:
        raise UserError("--tokenizer-model is required: the Hugging Face tokenizer (or model) directory or name")
    if source.startswith("tiny:"):
        from megatron_sft.tiny import make_tiny_tokenizer

        return make_tiny_tokenizer(source.split(":", 1)[1])
    problem = tokenizer_problem(source)
    if problem:
        raise UserError(problem)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, use_fast=True)
    except (OSError, ValueError) as err:
        raise UserError(f"{source}: cannot load a tokenizer ({str(err).splitlines()[0]})") from None


def pad_token_id(tokenizer) -> int:
    """The id padding positions hold: the pad token, else eos. Padding is never trained on (loss mask 0) nor
    read (attention masks, or after the last position read), so any real id works; none at all is refused."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise UserError("the tokenizer has neither a pad token nor an eos token; set tokenizer.pad_token")
    return int(pad)
