"""Read -> validate -> render -> tokenize -> mask, chunk by chunk.

Rendering (Jinja, Python) and tokenizing (Rust, which releases the GIL) are two stages that overlap:
while one chunk is tokenized on a thread, the next one is rendered. Worker processes (workers.py)
run the same two stages on their share of the chunks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from megatron_sft.data.encode import SampleEncoder
from megatron_sft.data.formats import InvalidRecord, NothingToTrain, to_conversation
from megatron_sft.data.render import ChatRenderer
from megatron_sft.data.sources import RawChunk, decode_line
from megatron_sft.data.stats import DataStats

CHUNK_RECORDS = 512


@dataclass
class ChunkResult:
    tokens: np.ndarray  # uint32, the kept samples concatenated
    supervised: np.ndarray  # uint8 flags, aligned with tokens; float32 loss weights when a message had a "weight"
    lengths: np.ndarray  # int64, one per kept sample
    source: int
    stats: DataStats = field(default_factory=DataStats)


class ChunkProcessor:
    """Turns one RawChunk into token arrays; picklable, one instance per worker process."""

    def __init__(
        self,
        tokenizer,
        chat_template: str | None,
        max_length: int,
        *,
        unmask_user: bool = False,
        skip_invalid: bool = False,
        drop_long_samples: bool = False,
        eod_mask_loss: bool = False,
        data_format: str = "auto",
        loss_turns: str = "all",
    ):
        self.renderer = ChatRenderer(tokenizer, chat_template)
        self.encoder = SampleEncoder(tokenizer)
        self.max_length = max_length  # --max-sample-length, by default --seq-length
        self.unmask_user, self.skip_invalid, self.drop_long = unmask_user, skip_invalid, drop_long_samples
        self.data_format, self.loss_turns = data_format, loss_turns
        self.masked_id = _eod_id_to_mask(tokenizer, self.renderer.end_of_turn) if eod_mask_loss else None

    def __call__(self, chunk: RawChunk) -> ChunkResult:
        return self.tokenize(*self.render(chunk))

    def render(self, chunk: RawChunk) -> tuple[RawChunk, DataStats, list, list]:
        """Stage 1 (Python): decode, validate and render every record of the chunk."""
        stats = DataStats()
        rendered, wheres = [], []
        for n, item in chunk.items:
            where = chunk.where(n)
            stats.records_read += 1
            try:
                record = decode_line(chunk, n, item) if chunk.is_lines else item
                conv = to_conversation(record, where, self.unmask_user, self.data_format, self.loss_turns)
                rendered.append(self.renderer.render(conv, where))
                wheres.append(where)
            except InvalidRecord as e:
                if not self.skip_invalid:
                    raise
                stats.count("invalid", e.reason, where)
            except NothingToTrain as e:
                stats.count("dropped", e.reason, where)
        return chunk, stats, rendered, wheres

    def tokenize(self, chunk: RawChunk, stats: DataStats, rendered: list, wheres: list) -> ChunkResult:
        """Stage 2 (mostly Rust, which releases the GIL): tokenize, mask, truncate or drop."""
        kept_tokens, kept_sup = [], []
        for (ids, sup), r, where in zip(self.encoder.encode(rendered), rendered, wheres):
            if len(ids) > self.max_length:
                if self.drop_long:
                    stats.count("dropped", "too_long", where)
                    continue
                ids, sup = ids[: self.max_length], sup[: self.max_length]
                stats.truncated += 1
                stats.examples.setdefault("truncated", where)
            if self.masked_id is not None:
                sup[ids == self.masked_id] = 0
            n_sup = int(np.count_nonzero(sup[1:]))  # a label exists only for tokens after the first
            if n_sup == 0:
                stats.count("dropped", "no_supervised_tokens", where)
                continue
            for kind in r.dropped:
                stats.count("template_dropped", kind, where)
            stats.add_sample(len(ids), n_sup)
            kept_tokens.append(ids)
            kept_sup.append(sup)
        return ChunkResult(
            tokens=np.concatenate(kept_tokens) if kept_tokens else np.zeros(0, np.uint32),
            supervised=np.concatenate(kept_sup) if kept_sup else np.zeros(0, np.uint8),
            lengths=np.array([len(t) for t in kept_tokens], dtype=np.int64),
            source=chunk.source,
            stats=stats,
        )


def _eod_id_to_mask(tokenizer, end_of_turn: str) -> int | None:
    """--eod-mask-loss: the padding/separator token loses its loss, never the end-of-turn token."""
    pad = tokenizer.pad_token_id
    if pad is None or pad == tokenizer.convert_tokens_to_ids(end_of_turn):
        return None
    return pad


def two_stage(processor: ChunkProcessor, chunks: Iterable[RawChunk]) -> Iterator[ChunkResult]:
    # One process: chunk k is tokenized on a thread (the Rust tokenizer releases the GIL) while this
    # thread renders chunk k+1 with Jinja, so rendering and tokenizing overlap instead of adding up.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        pending = None
        for chunk in chunks:
            staged = processor.render(chunk)
            if pending is not None:
                yield pending.result()
            pending = pool.submit(processor.tokenize, *staged)
        if pending is not None:
            yield pending.result()
