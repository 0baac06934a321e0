"""Map chunks to results over worker processes, in input order, with a bounded number in flight.

Only a few chunks are in memory at a time however large the data, and the output does not depend on
the number of workers. Workers are spawned, not forked: forking a training process (threads of
torch.distributed, CUDA) can deadlock, and a fresh worker imports only the tokenizing modules (no
torch), so it stays small. If workers cannot start (a script without `if __name__ == "__main__":`,
code fed through stdin), preparation continues in this process, with a warning.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from megatron_sft.data.pipeline import ChunkProcessor, ChunkResult, two_stage
from megatron_sft.data.sources import RawChunk
from megatron_sft.data.stats import DataStats

log = logging.getLogger(__name__)
_WORKER: ChunkProcessor | None = None
# One process already keeps about two cores busy (a rendering thread and a tokenizing thread), so
# worker processes only pay for their start-up and transfers on smaller machines.
MIN_CORES_FOR_WORKERS = 3


@contextlib.contextmanager
def chunk_mapper(processor: ChunkProcessor, num_workers: int) -> Iterator[Callable[[Iterable], Iterator]]:
    """A function mapping chunks to results in order, over `num_workers` processes (<= 1: this process)."""
    cores = os.cpu_count() or 1
    if num_workers > 1 and cores < MIN_CORES_FOR_WORKERS:
        log.info(
            "data: %d cores: preparing in this process (rendering and tokenizing overlap); "
            "--num-workers %d takes effect on machines with %d or more cores",
            cores,
            num_workers,
            MIN_CORES_FOR_WORKERS,
        )
        num_workers = 1
    pool = _start_pool(processor, num_workers) if num_workers > 1 else None
    if pool is None:
        yield lambda chunks: two_stage(processor, chunks)
        return
    try:
        yield lambda chunks: _bounded_ordered_map(pool, chunks, 2 * num_workers)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _start_pool(processor: ChunkProcessor, num_workers: int):
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # The cores are shared out: each worker's Rust tokenizer gets cores // workers threads.
    threads = max(1, (os.cpu_count() or 1) // num_workers)
    env = {"RAYON_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "true" if threads > 1 else "false"}
    pool = ProcessPoolExecutor(
        num_workers, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=(processor, env)
    )
    try:
        pool.submit(_ready).result()
    except BrokenProcessPool as e:
        pool.shutdown(wait=False, cancel_futures=True)
        log.warning("data: %d worker processes could not start (%s); preparing in this process", num_workers, e)
        return None
    return pool


def _init_worker(processor: ChunkProcessor, env: dict[str, str]) -> None:
    global _WORKER
    os.environ.update(env)  # before the worker's first tokenization creates its thread pool
    _WORKER = processor


def _ready() -> bool:
    return True


def _run_in_worker(chunk: RawChunk) -> ChunkResult:
    # Within a worker too, render one slice while the previous one is tokenized.
    step = max(1, len(chunk.items) // 4)
    slices = [
        RawChunk(chunk.source, chunk.label, chunk.is_lines, chunk.items[i : i + step])
        for i in range(0, len(chunk.items), step)
    ]
    parts = list(two_stage(_WORKER, slices))
    stats = DataStats()
    for part in parts:
        stats.merge(part.stats)
    return ChunkResult(
        tokens=np.concatenate([p.tokens for p in parts]),
        supervised=np.concatenate([p.supervised for p in parts]),
        lengths=np.concatenate([p.lengths for p in parts]),
        source=chunk.source,
        stats=stats,
    )


def _bounded_ordered_map(pool, chunks: Iterable[RawChunk], in_flight: int) -> Iterator[ChunkResult]:
    # Executor.map would submit the whole input at once; this keeps at most `in_flight` chunks submitted.
    pending: deque = deque()
    for chunk in chunks:
        pending.append(pool.submit(_run_in_worker, chunk))
        if len(pending) >= in_flight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
