"""Save and load Megatron checkpoints through dist_checkpointing (torch_dist).

Sharded checkpoints are layout-independent: a checkpoint saved at TP=2 loads at TP=1, PP=2,
and so on, because every rank states which slice of each global tensor it holds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shutil
import signal
import socket
import threading
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException

from megatron_sft.checkpointing import integrity, layout, modelopt_state, space
from megatron_sft.errors import UserError
from megatron_sft.runtime.distributed import any_rank

log = logging.getLogger(__name__)


def _chunk_key(i: int, n_chunks: int) -> str:
    """Megatron-LM's keys: 'model' for one chunk, 'model0', 'model1', ... for virtual stages."""
    return "model" if n_chunks == 1 else f"model{i}"


def model_sharded_state_dict(chunks: list, keep=None) -> dict:
    """Every chunk's sharded state; with `keep` (a predicate on keys), only those entries (LoRA: adapters)."""
    states = {_chunk_key(i, len(chunks)): c.sharded_state_dict() for i, c in enumerate(chunks)}
    if modelopt_state.model_is_quantized(chunks):
        states = {k: modelopt_state.shard_fc1_rows_as_swiglu(c, states[k]) for k, c in zip(states, chunks)}
    if keep is None:
        return states
    return {name: {k: v for k, v in state.items() if keep(k)} for name, state in states.items()}


def load_chunk_states(chunks: list, loaded: dict, keep=None) -> None:
    """Put a loaded (model part of a) state dict into the chunks. Every weight must be there, or with
    `keep`, every weight it selects (the others, e.g. a LoRA run's frozen base, are loaded already)."""
    for i, chunk in enumerate(chunks):
        result = chunk.load_state_dict(loaded[_chunk_key(i, len(chunks))], strict=keep is None)
        missing = [k for k in getattr(result, "missing_keys", []) if keep(k)] if keep is not None else []
        if missing or getattr(result, "unexpected_keys", None):
            raise RuntimeError(f"checkpoint load: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}")


_token: list[str] = []


def _run_token() -> str:
    """A name for this run that every rank agrees on (rank 0's host and pid): its staging directories carry it,
    so no two runs ever write into, or delete, each other's."""
    if not _token:
        token = [f"{socket.gethostname()}-{os.getpid()}"]
        if dist.is_initialized():
            dist.broadcast_object_list(token, src=0)
        _token.append(token[0])
    return _token[0]


def _is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class SaveFailed(UserError):
    """A save that could not be completed (disk full, I/O error); its partial directory is gone."""


@contextlib.contextmanager
def _stop_signals_deferred():
    """SIGTERM and SIGINT wait while dist_checkpointing runs, and the helper processes it spawns ignore them.

    torchrun forwards a preemption notice to each worker's whole process group (os.killpg); the helpers of the
    save are in it, and killed they leave the next save hanging. A process started while SIGTERM is ignored keeps
    ignoring it (an ignored disposition survives exec). The worker itself loses nothing: the signal is blocked
    meanwhile, so Linux keeps it pending and delivers it to the worker's handler once the save returns."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGTERM, signal.SIGINT)  # torchrun forwards Ctrl-C the same way
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, set(signals))
    handlers = {s: signal.signal(s, signal.SIG_IGN) for s in signals}
    try:
        yield
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _write_files(staging: Path, sharded_state: dict, args_record: dict, hf_assets_src, chat_template,
                 parts: Sequence) -> None:
    """Everything of one checkpoint but its manifest, into the staging directory: the sharded state and the
    collective parts on every rank, then run_args.json, hf_assets/ and the other parts on rank 0."""
    from megatron.core import dist_checkpointing

    with _stop_signals_deferred():
        dist_checkpointing.save(sharded_state, str(staging))
        for part in parts:
            if part.collective:
                part.write(staging)
    if _is_rank0():
        layout.write_run_args(staging, args_record)
        layout.copy_hf_assets(hf_assets_src, staging, chat_template)
        for part in parts:
            if not part.collective:
                part.write(staging)


def save_checkpoint(
    root: str | Path,
    iteration: int | None,
    sharded_state: dict,
    args_record: dict,
    *,
    hf_assets_src: str | Path | None = None,
    chat_template: str | None = None,
    parts: Sequence = (),
) -> Path:
    """Write one checkpoint atomically: into `.iter_N.saving.<run>/`, then the manifest (fsynced), then the rename
    to `iter_N/`, then the tracker. A crash at any point leaves the previous checkpoint current and
    intact; a failure (ENOSPC, EIO) removes the partial save and raises SaveFailed on every rank.

    `sharded_state` is e.g. `model_sharded_state_dict(chunks)`, plus optimizer state for training; `parts`
    (checkpointer.Part: a name and its writer) are the checkpoint's other files, written before the manifest, so
    it covers them. Checkpointer.save is the caller for runs that save repeatedly; conversions call it once."""
    root = Path(root)
    final = layout.iteration_dir(root, iteration)
    staging = layout.staging_dir(final, _run_token())
    if _is_rank0():
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)  # this run's own save of `final` that failed earlier
        staging.mkdir()
    _barrier()
    error = None
    try:
        _write_files(staging, sharded_state, args_record, hf_assets_src, chat_template, parts)
        _barrier()
        size = integrity.write_manifest(staging)
    except (OSError, RuntimeError, CheckpointException) as err:  # a writer's OSError arrives wrapped in these
        error = err
    if any_rank(error is not None):
        if _is_rank0():
            shutil.rmtree(staging, ignore_errors=True)
        if error is not None and not isinstance(error, (OSError, CheckpointException)) and not _io_like(error):
            raise error  # a bug, not the disk: keep its traceback (the other ranks say the save failed)
        raise SaveFailed(_failure_line(root, final, error))
    if _is_rank0():
        layout.publish(staging, final)
        layout.write_tracker(root, iteration)
    _barrier()
    log.info("saved checkpoint %s (%.1f MB)", final, size / 1e6)
    return final


def _failure_line(root: Path, final: Path, error: BaseException | None) -> str:
    text = " ".join(str(error).split()) if error is not None else ""
    if "No space left" in text or "unexpected pos" in text or space.free_bytes(root) < (1 << 20):
        reason = "the file system ran out of space"
    else:
        reason = f"{type(error).__name__}: {text[:200]}" if error is not None else "it failed on another rank"
    try:
        last = str(layout.latest_checkpoint_dir(root)[0])
    except UserError:
        last = "none"
    return f"saving {final} failed: {reason}; the partial save was removed; last intact checkpoint: {last}"


def load_sharded(sharded: dict, ckpt_dir: str | Path) -> dict:
    """dist_checkpointing.load, with a damaged file reported in one line instead of an unpickler traceback
    (checkpoints with a manifest were checked before; this covers those without one)."""
    from megatron.core import dist_checkpointing

    try:
        return dist_checkpointing.load(sharded, str(ckpt_dir))
    except (EOFError, OSError, pickle.UnpicklingError, RuntimeError, ValueError) as err:
        if isinstance(err, (RuntimeError, ValueError)) and not _io_like(err):
            raise  # a bug or a layout mismatch, not damage: keep the traceback
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise UserError(f"{ckpt_dir}: cannot be read ({type(err).__name__}: {reason}); the checkpoint is damaged: "
                        "load another iteration with --ckpt-step N") from None


def _io_like(err: BaseException) -> bool:
    """An error that reports damaged or unwritable files (dist_checkpointing wraps the OSError in its own)."""
    text = str(err)
    return any(s in text for s in ("EOF", "unpickl", "PytorchStreamReader", "corrupt", "truncated", "No space left",
                                   "unexpected pos", "Errno", "Worker failure", "Input/output"))


@torch.no_grad()
def load_model_weights(ckpt_dir: str | Path, chunks: list, keep=None) -> None:
    """Load the model part of a checkpoint into `chunks`, resharding to this rank's layout."""
    sharded = model_sharded_state_dict(chunks, keep)
    loaded = load_sharded(sharded, ckpt_dir)
    load_chunk_states(chunks, loaded, keep)
    log.info("loaded model weights from %s", ckpt_dir)
