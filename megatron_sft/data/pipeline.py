"""Read -> validate -> render -> tokenize -> mask, chunk by chunk, in worker processes, in order.

Chunks are handed to a bounded number of workers and results come back in input order, so memory
holds only a few chunks at a time however large the data, and the output does not depend on the
number of workers.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
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
    supervised: np.ndarray  # uint8, aligned with tokens
    lengths: np.ndarray  # int64, one per kept sample
    source: int
    stats: DataStats = field(default_factory=DataStats)


class ChunkProcessor:
    """Turns one RawChunk into token arrays; picklable, one instance per worker process."""

    def __init__(
        self,
        tokenizer,
        chat_template: str | None,
        seq_length: int,
        *,
        unmask_user: bool = False,
        skip_invalid: bool = False,
        drop_long_samples: bool = False,
        eod_mask_loss: bool = False,
    ):
        self.renderer = ChatRenderer(tokenizer, chat_template)
        self.encoder = SampleEncoder(tokenizer)
        self.seq_length = seq_length
        self.unmask_user, self.skip_invalid, self.drop_long = unmask_user, skip_invalid, drop_long_samples
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
                conv = to_conversation(record, where, self.unmask_user)
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
            if len(ids) > self.seq_length:
                if self.drop_long:
                    stats.count("dropped", "too_long", where)
                    continue
                ids, sup = ids[: self.seq_length], sup[: self.seq_length]
                stats.truncated += 1
                stats.examples.setdefault("truncated", where)
            if self.masked_id is not None:
                sup[ids == self.masked_id] = 0
            n_sup = int(sup[1:].sum())  # a label exists only for tokens after the first
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


_WORKER: ChunkProcessor | None = None


def _init_worker(processor: ChunkProcessor) -> None:
    global _WORKER
    _WORKER = processor


def _run_in_worker(chunk: RawChunk) -> ChunkResult:
    return _WORKER(chunk)


@contextlib.contextmanager
def chunk_mapper(processor: ChunkProcessor, num_workers: int) -> Iterator[Callable[[Iterable], Iterator]]:
    """A function mapping chunks to results in order, over `num_workers` processes (1: in this process)."""
    if num_workers <= 1:
        yield lambda chunks: _two_stage(processor, chunks)
        return
    import multiprocessing as mp

    # Workers are spawned, not forked: forking a training process (threads of torch.distributed, CUDA)
    # can deadlock, and a fresh worker imports only the tokenizing modules (no torch), so it stays small.
    # Each worker tokenizes on one thread; Rust-level threads would only oversubscribe the cores.
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # inherited by the workers
    try:
        pool = mp.get_context("spawn").Pool(num_workers, initializer=_init_worker, initargs=(processor,))
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old
    try:
        yield lambda chunks: _bounded_ordered_map(pool, chunks, 2 * num_workers)
    finally:
        pool.terminate()
        pool.join()


def _two_stage(processor: ChunkProcessor, chunks: Iterable[RawChunk]) -> Iterator[ChunkResult]:
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


def _bounded_ordered_map(pool, chunks: Iterable[RawChunk], in_flight: int) -> Iterator[ChunkResult]:
    # Pool.imap would read the whole input ahead; this keeps at most `in_flight` chunks submitted.
    pending: deque = deque()
    for chunk in chunks:
        pending.append(pool.apply_async(_run_in_worker, (chunk,)))
        if len(pending) >= in_flight:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()
