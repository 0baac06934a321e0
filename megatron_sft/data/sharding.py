"""Which packed sequence each data-parallel replica reads, in which order, from any resume point.

A "sample" is one packed sequence (Megatron's meaning, for --train-samples and consumed-samples).
Global sample g is pack perm_e[g % P] of epoch e = g // P, where P is the number of packs per epoch
and perm_e a permutation fixed by (seed, e): a new deterministic shuffle each epoch.

Replica d of D (the data-parallel rank and size, never the expert-data-parallel ones) reads global
samples d, d+D, d+2D, ... and groups them into micro-batches of consecutive entries. So one global
batch of GBS samples starting at g0 is the GBS consecutive samples g0 .. g0+GBS-1: micro-batch m of
replica d holds g0 + (m*MBS + j)*D + d for j < MBS. Every TP/PP/CP rank of one replica has the same
data-parallel rank and so reads the same stream. Resuming after `consumed` samples (a multiple of D)
continues at g = consumed + d.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np

from megatron_sft.data.mixture import epoch_permutation

log = logging.getLogger(__name__)


class PackStream:
    """An endless, resumable stream of micro-batches for one data-parallel replica."""

    def __init__(
        self,
        n_packs: int,
        get_pack: Callable[[int], dict],
        collate: Callable[[list], dict],
        *,
        dp_rank: int,
        dp_size: int,
        micro_batch_size: int,
        consumed_samples: int = 0,
        shuffle: bool = True,
        seed: int = 1234,
        conversations_per_epoch: int | None = None,
        name: str = "train",
    ):
        if n_packs <= 0:
            raise ValueError(f"{name} split has no packed sequence")
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"data-parallel rank {dp_rank} is outside [0, {dp_size})")
        if consumed_samples % dp_size:
            raise ValueError(f"consumed samples ({consumed_samples}) must be a multiple of the DP size ({dp_size})")
        self.n_packs, self.get_pack, self.collate = n_packs, get_pack, collate
        self.dp_rank, self.dp_size, self.micro_batch_size = dp_rank, dp_size, micro_batch_size
        self.consumed_samples, self.shuffle, self.seed = consumed_samples, shuffle, seed
        self.conversations_per_epoch, self.name = conversations_per_epoch, name
        self._perm_cache: tuple[int, np.ndarray] | None = None

    @property
    def packs_per_epoch(self) -> int:
        return self.n_packs

    def pack_of(self, global_sample: int) -> int:
        """The pack index read at a global sample index."""
        epoch, pos = divmod(global_sample, self.n_packs)
        if not self.shuffle:
            return pos
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            self._perm_cache = (epoch, epoch_permutation(self.n_packs, self.seed, epoch))
        return int(self._perm_cache[1][pos])

    def global_samples(self, start_step: int = 0) -> Iterator[int]:
        """Global sample indices of this replica, from its `start_step`-th read on."""
        g = self.consumed_samples + self.dp_rank + start_step * self.dp_size
        while True:
            if g % self.n_packs < self.dp_size and self.dp_rank == 0 and self.shuffle:
                log.info(
                    "data: %s epoch %d starts (%d packed sequences, %s conversations per epoch)",
                    self.name,
                    g // self.n_packs,
                    self.n_packs,
                    self.conversations_per_epoch,
                )
            yield g
            g += self.dp_size

    def __iter__(self) -> Iterator[dict]:
        rows = []
        for g in self.global_samples():
            rows.append(self.get_pack(self.pack_of(g)))
            if len(rows) == self.micro_batch_size:
                yield self.collate(rows)
                rows = []
