"""What one packed micro-batch feeds the model, for each attention backend.

`auto` (default): the B rows are joined into one THD token stream (Megatron's THD attention has
no batch dimension), cut for this context-parallel rank, and described by `PackedSeqParams`; the
packed attention module reads the sample boundaries from it. No S x S mask exists anywhere.

`local`: Megatron's `DotProductAttention` with the explicit block-diagonal causal mask, built
here from cu_seqlens (the reference the packed path is tested and benchmarked against).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_sft.config import RunConfig
from megatron_sft.data.batch import attention_mask_from_cu_seqlens, join_rows, split_for_context_parallel


@dataclass(frozen=True)
class PackedLayout:
    """How micro-batches are laid out for the model and for the pipeline schedule's p2p shapes."""

    thd: bool  # one THD stream per micro-batch (attention backend auto)
    cp_size: int = 1
    cp_rank: int = 0

    def schedule_shape(self, seq_length: int, micro_batch_size: int) -> tuple[int, int]:
        """(seq_length, micro_batch_size) as Megatron's schedules must see them (before CP/SP splits)."""
        return (seq_length * micro_batch_size, 1) if self.thd else (seq_length, micro_batch_size)

    @classmethod
    def from_config(cls, cfg: RunConfig) -> PackedLayout:
        from megatron.core import parallel_state as ps

        return cls(thd=cfg.runtime.attention_backend == "auto", cp_size=ps.get_context_parallel_world_size(),
                   cp_rank=ps.get_context_parallel_rank())


def thd_params(cu_seqlens: torch.Tensor, cu_seqlens_padded: torch.Tensor, max_seqlen: int):
    """PackedSeqParams of one THD stream. The boundaries stay on the CPU: Megatron's unfused THD
    RoPE and the packed attention read them as Python ints, so no device sync per layer."""
    from megatron.core.packed_seq_params import PackedSeqParams

    cu, padded = cu_seqlens.to(torch.int32).cpu(), cu_seqlens_padded.to(torch.int32).cpu()
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, cu_seqlens_q_padded=padded,
                           cu_seqlens_kv_padded=padded, max_seqlen_q=max_seqlen, max_seqlen_kv=max_seqlen)


def model_inputs(batch: dict, layout: PackedLayout, device: str) -> dict:
    """tokens, position_ids, labels, loss_mask on `device`; attention_mask; packed_seq_params."""
    if layout.thd:
        stream = split_for_context_parallel(join_rows(batch), layout.cp_size, layout.cp_rank)
        params = thd_params(stream["cu_seqlens"], stream["cu_seqlens_padded"], int(stream["max_seqlen"]))
        mask = None
    else:
        stream, params = batch, None
        b, s = batch["tokens"].shape
        bounds = batch["cu_seqlens_padded"] if b > 1 else [batch["cu_seqlens_padded"]]
        mask = torch.stack([attention_mask_from_cu_seqlens(torch.as_tensor(c), s) for c in bounds])
    out = {k: stream[k].to(device, non_blocking=True) for k in ("tokens", "position_ids", "labels", "loss_mask")}
    out["attention_mask"] = None if mask is None else mask.to(device, non_blocking=True)
    out["packed_seq_params"] = params
    return out
