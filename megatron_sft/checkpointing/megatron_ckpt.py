"""Save and load Megatron checkpoints through dist_checkpointing (torch_dist).

Sharded checkpoints are layout-independent: a checkpoint saved at TP=2 loads at TP=1, PP=2,
and so on, because every rank states which slice of each global tensor it holds.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_sft.checkpointing import layout

log = logging.getLogger(__name__)


def _chunk_key(i: int, n_chunks: int) -> str:
    """Megatron-LM's keys: 'model' for one chunk, 'model0', 'model1', ... for virtual stages."""
    return "model" if n_chunks == 1 else f"model{i}"


def model_sharded_state_dict(chunks: list, keep=None) -> dict:
    """Every chunk's sharded state; with `keep` (a predicate on keys), only those entries (LoRA: adapters)."""
    states = {_chunk_key(i, len(chunks)): c.sharded_state_dict() for i, c in enumerate(chunks)}
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


def _is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_checkpoint(
    root: str | Path,
    iteration: int | None,
    sharded_state: dict,
    args_record: dict,
    *,
    hf_assets_src: str | Path | None = None,
    chat_template: str | None = None,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write one checkpoint; it becomes visible (tracker updated) only once every rank is done.

    `sharded_state` is e.g. `model_sharded_state_dict(chunks)`, plus optimizer state for training.
    """
    from megatron.core import dist_checkpointing

    root = Path(root)
    ckpt_dir = layout.iteration_dir(root, iteration)
    if _is_rank0():
        if ckpt_dir.exists():  # a partial save from a crashed run, never referenced by the tracker
            shutil.rmtree(ckpt_dir)
        ckpt_dir.mkdir(parents=True)
    _barrier()
    dist_checkpointing.save(sharded_state, str(ckpt_dir))
    if _is_rank0():
        layout.write_run_args(ckpt_dir, args_record)
        layout.copy_hf_assets(hf_assets_src, ckpt_dir, chat_template)
        for name, text in (extra_files or {}).items():
            (ckpt_dir / name).write_text(text)
    _barrier()
    if _is_rank0():
        layout.write_tracker(root, iteration)
    _barrier()
    log.info("saved checkpoint %s", ckpt_dir)
    return ckpt_dir


@torch.no_grad()
def load_model_weights(ckpt_dir: str | Path, chunks: list, keep=None) -> None:
    """Load the model part of a checkpoint into `chunks`, resharding to this rank's layout."""
    from megatron.core import dist_checkpointing

    sharded = model_sharded_state_dict(chunks, keep)
    loaded = dist_checkpointing.load(sharded, str(ckpt_dir))
    load_chunk_states(chunks, loaded, keep)
    log.info("loaded model weights from %s", ckpt_dir)
