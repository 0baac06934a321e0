"""Rendered text -> token ids and a per-token `supervised` flag (uint8), or, when a message carries a "weight"
other than 1, each token's loss weight (float32; 0 = not supervised).

A token is supervised when the character its text starts at lies inside a supervised span. Spans are
mapped to token ranges through the fast tokenizer's character offsets, so no per-token Python work is
done: two lookups per span.
"""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer

from megatron_sft.data.render import Rendered
from megatron_sft.errors import UserError


class SampleEncoder:
    """Tokenizes rendered conversations in batches (no special tokens added: the template has them)."""

    def __init__(self, tokenizer):
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise UserError(
                f"tokenizer {type(tokenizer).__name__} is not a fast (Rust) tokenizer; loss masks need its "
                "character offsets: load it with AutoTokenizer.from_pretrained(..., use_fast=True)"
            )
        # A private copy without truncation or padding: some tokenizer.json files carry either.
        self._backend = Tokenizer.from_str(backend.to_str())
        self._backend.no_truncation()
        self._backend.no_padding()

    def encode(self, rendered: list[Rendered]) -> list[tuple[np.ndarray, np.ndarray]]:
        encodings = self._backend.encode_batch([r.text for r in rendered], add_special_tokens=False)
        out = []
        for r, enc in zip(rendered, encodings):
            ids = np.array(enc.ids, dtype=np.uint32)
            supervised = np.zeros(len(ids), dtype=np.uint8 if r.weights is None else np.float32)
            for k, (a, b) in enumerate(r.spans):
                weight = 1 if r.weights is None else r.weights[k]
                supervised[_first_token_from(enc, a, len(r.text)) : _first_token_from(enc, b, len(r.text))] = weight
            out.append((ids, supervised))
        return out


def _first_token_from(enc, char: int, text_len: int) -> int:
    """Index of the first token whose text starts at or after `char`."""
    if char >= text_len:
        return len(enc)  # len(enc), not len(enc.ids): .ids builds a new list on every access
    t = enc.char_to_token(char)
    if t is None:  # a character no token covers (dropped by the normaliser): scan the offsets
        starts = np.array([o[0] for o in enc.offsets])
        return int(np.searchsorted(starts, char, side="left"))
    start = enc.token_to_chars(t)[0]
    return t if start >= char else t + 1
