"""One owner for a run's saves: when to save, room on disk, the atomic save, --keep-last, --save-hf, the last
save's bookkeeping, and the Hugging Face directory a finished run's last checkpoint still lacks.

    checkpointer = Checkpointer(cfg.checkpoint, assets=hf_assets_source(cfg), resumed_from=ckpt_dir)
    if checkpointer.due(iteration):
        checkpointer.save(iteration, content)      # content: what this kind of run saves (Content below)
    checkpointer.finish(iteration, content)        # the last save and its Hugging Face directory, if not done

What a checkpoint holds besides its sharded state plugs in as named parts (Part: a name from names.py and its
writer), so a new kind of run (preference training, distillation) adds parts, not hooks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from megatron_sft.checkpointing import layout, space
from megatron_sft.checkpointing.integrity import checkpoint_size
from megatron_sft.checkpointing.megatron_ckpt import save_checkpoint
from megatron_sft.config import CheckpointConfig
from megatron_sft.errors import UserError
from megatron_sft.runtime.distributed import any_rank

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Part:
    """A file or folder of a checkpoint beside the sharded state, written into the save's staging directory."""

    name: str  # its name in names.py
    write: Callable[[Path], None]  # called with the staging directory
    collective: bool = False  # every rank calls it (a quantized model's modelopt state); else rank 0 alone


class Content(Protocol):
    """What one kind of run saves (training/state.py: TrainingContent)."""

    def sharded_state(self) -> dict: ...
    def parts(self) -> list[Part]: ...
    def args_record(self) -> dict: ...
    def estimated_bytes(self) -> int: ...
    def estimated_hf_bytes(self) -> int: ...
    def write_hf(self, ckpt_dir: Path) -> Path: ...


class Checkpointer:
    def __init__(self, settings: CheckpointConfig, assets: str | Path | None, resumed_from: Path | None = None):
        self.settings = settings
        self.assets = assets  # each save copies the HF config and tokenizer from here (then from the last save)
        self.resumed_from = resumed_from
        self.last_save: Path | None = None
        self.saved_iteration: int | None = None
        self.hf_path: Path | None = None
        self.hf_iteration: int | None = None
        self.bytes = checkpoint_size(resumed_from) if resumed_from is not None else None  # the last save's size
        self.hf_bytes: int | None = None

    @property
    def root(self) -> str | None:
        return self.settings.save

    def due(self, iteration: int) -> bool:
        """A periodic save (--save-interval) falls on this iteration."""
        interval = self.settings.save_interval
        return bool(self.root and interval and iteration % interval == 0)

    def check_space(self, when: str, content: Content) -> None:
        """Room for one more checkpoint (the last one's size, or an estimate before the first), agreed by all
        ranks; too little is one line, before anything is written."""
        if self.bytes is not None:
            need, basis = self.bytes, "the size of the last one"
        else:
            need, basis = content.estimated_bytes(), "estimated from the parameters and optimizer"
        if self.settings.save_hf:  # its Hugging Face directory too (--save-hf final: at the last save)
            need += self.hf_bytes if self.hf_bytes is not None else content.estimated_hf_bytes()
            basis += ", plus its Hugging Face directory"
        problem = space.shortfall(self.root, need, basis)
        if any_rank(problem is not None):
            last = f"; last intact checkpoint: {self.last_save}" if self.last_save else ""
            raise UserError(f"not enough disk space {when}: {problem or 'too little on another rank'}{last}")

    def save(self, iteration: int, content: Content) -> Path | None:
        """One atomic save (then its --save-hf directory with --save-hf all, then --keep-last's pruning)."""
        if not self.root:
            return None
        self.check_space(f"to save iteration {iteration}", content)
        path = save_checkpoint(self.root, iteration, content.sharded_state(), content.args_record(),
                               hf_assets_src=self.assets, parts=content.parts())
        self.last_save, self.saved_iteration = path, iteration
        self.bytes = checkpoint_size(path) or self.bytes
        saved_assets = layout.CheckpointDir(path).hf_assets
        if saved_assets.is_dir():
            self.assets = saved_assets  # the checkpoint resumed from may be pruned
        if self.settings.save_hf == "all":
            self._write_hf(path, iteration, content)
        if self.settings.keep_last and torch.distributed.get_rank() == 0:
            for old in layout.prune(Path(self.root), self.settings.keep_last, iteration):
                log.info("--keep-last %d: deleted %s", self.settings.keep_last, old)
        torch.distributed.barrier()
        return path

    def finish(self, iteration: int, content: Content) -> None:
        """The end of a run: its last iteration saved, and its Hugging Face directory written (--save-hf final, or
        a last save that was periodic), unless done already."""
        if self.root and self.saved_iteration != iteration:
            self.save(iteration, content)
        if self.settings.save_hf and self.saved_iteration is not None and self.hf_iteration != self.saved_iteration:
            self._write_hf(self.last_save, self.saved_iteration, content)

    def repair_missing_hf(self, iteration: int, content: Content) -> None:
        """A finished run started again with --save-hf: its last checkpoint gets the directory it lacks."""
        done = self.resumed_from
        if not self.settings.save_hf or done is None:
            return
        if any_rank(not layout.CheckpointDir(done).hf.is_dir()):
            log.info("--save-hf: %s has no Hugging Face directory yet; writing it", done)
            self._write_hf(done, iteration, content)
        else:
            self.hf_path = layout.CheckpointDir(done).hf
        log.info("Hugging Face: %s", self.hf_path)

    def _write_hf(self, ckpt_dir: Path, iteration: int, content: Content) -> None:
        self.hf_path, self.hf_iteration = content.write_hf(ckpt_dir), iteration
        self.hf_bytes = checkpoint_size(self.hf_path) or self.hf_bytes

    def describe(self) -> str:
        """For the run's last line: where its checkpoint (and Hugging Face directory) are."""
        hf = f" | Hugging Face: {self.hf_path}" if self.hf_path else ""
        return f"checkpoint: {self.last_save or 'not saved (no --save)'}{hf}"


def claim_save_dir(save: str | None):
    """Rank 0 claims --save for this run (owner.py) and clears what killed runs left there. A live owner's directory
    is refused in one line; rank 0 exits on it before the process group forms, and torchrun stops the others."""
    if not save or int(os.environ.get("RANK", "0")) != 0:
        return None
    from megatron_sft.checkpointing.owner import SaveClaim, cleanup_leftovers

    claim = SaveClaim(save)
    claim.acquire()
    cleanup_leftovers(save)
    return claim
