"""Which tokens of a packed (THD) stream each context-parallel rank holds: Megatron-Core's and Transformer Engine's
load-balanced split, where each sample is cut into 2 x CP chunks and rank r keeps chunks r and 2 x CP - 1 - r."""

from __future__ import annotations

import torch


def context_parallel_indices(boundaries: torch.Tensor, cp_size: int, cp_rank: int) -> torch.Tensor:
    """Positions rank `cp_rank` keeps: of each segment cut into 2*CP chunks, chunks r and 2*CP-1-r."""
    parts = []
    for a, b in zip(boundaries[:-1].tolist(), boundaries[1:].tolist()):
        if (b - a) % (2 * cp_size):
            raise ValueError(
                f"segment [{a}, {b}) of length {b - a} is not a multiple of 2 x CP = {2 * cp_size}; "
                "call pad_for_context_parallel first"
            )
        c = (b - a) // (2 * cp_size)
        for chunk in (cp_rank, 2 * cp_size - 1 - cp_rank):
            parts.append(torch.arange(a + chunk * c, a + (chunk + 1) * c))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def thd_get_partitioned_indices(cu_seqlens: torch.Tensor, total_tokens: int, cp_size: int, cp_rank: int
                                ) -> torch.Tensor:
    """Transformer Engine's function of this name (tex.thd_get_partitioned_indices), for Megatron-Core's Mamba
    context parallelism without Transformer Engine: the stream positions rank `cp_rank` holds, in its order."""
    bounds = cu_seqlens.detach().cpu().to(torch.long)
    if int(bounds[-1]) != total_tokens:
        bounds = torch.cat([bounds, torch.tensor([total_tokens])])
    return context_parallel_indices(bounds, cp_size, cp_rank).to(cu_seqlens.device)
