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


def assets_dir(cfg) -> Path:
    """Directory with the tokenizer (and usually config.json / generation_config.json) for --load."""
    from megatron_sft.checkpointing.loading import hf_assets_source

    source = cfg.tokenizer.tokenizer_model or hf_assets_source(cfg)
    if source is None:
        raise UserError(f"--load {cfg.checkpoint.load}: the checkpoint has no hf_assets/ with a tokenizer; pass "
                        "--tokenizer-model (or --pretrained-model-path) with the Hugging Face directory it came from")
    return Path(source)


def load_tokenizer(cfg):
    from transformers import AutoTokenizer

    path = assets_dir(cfg)
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot load a tokenizer ({str(err).splitlines()[0]})") from None


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


def pad_token_id(tokenizer) -> int:
    """Any real id will do: padded positions are masked (left) or after the last read position (right)."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0
