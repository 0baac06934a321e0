"""The tokenizer, stop tokens and real vocabulary size of the model --load points at."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from megatron_sft.errors import UserError

log = logging.getLogger(__name__)

# End-of-turn markers of common chat templates. They count as stops when the tokenizer knows them as
# one token and its chat template writes them: a base model's generation_config often lists only the
# document end, yet a chat-formatted answer ends at the turn end.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def stop_token_ids(tokenizer, directory: Path) -> list[int]:
    """generation_config.json's eos ids, the tokenizer's eos, and the template's end-of-turn token."""
    ids: list[int] = []
    config = directory / "generation_config.json"
    if config.is_file():
        try:
            ids += _as_list(json.loads(config.read_text()).get("eos_token_id"))
        except (ValueError, TypeError) as err:
            raise UserError(f"{config}: unreadable ({err})") from None
    ids += _as_list(tokenizer.eos_token_id)
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    vocab = tokenizer.get_vocab()
    ids += [vocab[t] for t in END_OF_TURN_TOKENS if t in vocab and t in template]
    unique = list(dict.fromkeys(ids))
    if not unique:
        log.warning("no eos / end-of-turn token known for %s: generation stops only at --max-new-tokens", directory)
    return unique


def real_vocab_size(tokenizer, directory: Path) -> int:
    """Tokens the model may emit: config.json's vocab_size (what transformers chooses from), else the
    tokenizer's length. Megatron pads its vocabulary beyond this; those logits are never chosen."""
    config = directory / "config.json"
    if config.is_file():
        vocab = json.loads(config.read_text()).get("vocab_size")
        if vocab:
            return int(vocab)
    return len(tokenizer)

