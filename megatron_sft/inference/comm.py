"""One rank decides, every rank follows: the chosen tokens come from a single rank of the last stage.

Every tensor-parallel rank of the last pipeline stage holds the same gathered logits, and data-
parallel replicas compute the same thing, but sampling (and even argmax over near-equal logits)
must not be left to each rank: a rank that disagrees would feed a different token and desynchronise
the pipeline. So the last stage's first rank chooses and broadcasts to the whole job.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def chooser_rank() -> int:
    """Global rank of the last pipeline stage with TP, CP and DP rank 0 (collective: call on every rank)."""
    from megatron.core import parallel_state as ps

    me = (
        ps.is_pipeline_last_stage(ignore_virtual=True)
        and ps.get_tensor_model_parallel_rank() == 0
        and ps.get_context_parallel_rank() == 0
        and ps.get_data_parallel_rank() == 0
    )
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return 0
    found = torch.tensor([dist.get_rank() if me else -1], dtype=torch.int64)
    dist.all_reduce(found, op=dist.ReduceOp.MAX)
    return int(found.item())


def is_chooser(src: int) -> bool:
    return (dist.get_rank() if dist.is_initialized() else 0) == src


def broadcast_tokens(tokens: torch.Tensor | None, batch_size: int, src: int) -> torch.Tensor:
    """`tokens` (int64 [B]) from rank `src` on every rank; other ranks pass None."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        assert tokens is not None
        return tokens
    out = tokens.to(torch.int64).contiguous() if is_chooser(src) else torch.empty(batch_size, dtype=torch.int64)
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    out = out.to(device)
    dist.broadcast(out, src=src)
    return out.cpu()
