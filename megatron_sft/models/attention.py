"""Core attention for the local spec: causal attention inside each packed sample, no S x S mask.

Megatron-Core's own `DotProductAttention` takes an explicit [B, 1, S, S] mask and materialises
fp32 scores of the same size, so packed training costs memory and time quadratic in the pack
length, and it refuses context parallelism. This module replaces it in the local spec
(`--attention-backend auto`):

* THD (training): `attention.py` hands over q [T, heads/TP, d] and k/v [T, groups/TP, d] with RoPE
  already applied per sample, and `PackedSeqParams.cu_seqlens_q_padded` segments the T tokens.
  Each segment gets its own causal `scaled_dot_product_attention` call (flash / memory-efficient
  kernels on CPU and CUDA): memory linear in T, nothing crosses a sample boundary.
* Context parallelism: every CP rank holds chunks r and 2CP-1-r of each sample (the THD split of
  `data/batch.py`). K/V are all-gathered over the CP group (their gradients reduce-scattered back)
  and each local query chunk attends to its sample's keys from 0 to its own end, aligned
  bottom-right: query j of a chunk starting at o sees keys 0 .. o+j.
* SBHD (generation, MMLU): q [sq, b, heads, d] with an optional boolean mask (Megatron's
  convention, True = masked) for left padding and the KV cache.

Megatron's softmax scale is kept: 1/sqrt(kv_channels) unless given (query-key layer scaling
divides the scores and the softmax multiplies them back, so it never changes the result).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule

_dropout_notice_given = False
SHORT = 256  # samples up to this many tokens are attended to in one batched call per micro-batch


class PackedSDPAttention(MegatronModule):
    """Drop-in for `DotProductAttention` (same constructor and forward signature)."""

    def __init__(self, config, layer_number: int, attn_mask_type, attention_type: str,
                 attention_dropout: float | None = None, softmax_scale: float | None = None,
                 cp_comm_type: str | None = None, pg_collection=None):
        super().__init__(config=config)
        from megatron.core.process_groups_config import ProcessGroupCollection

        if pg_collection is None:
            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp", "cp"])
        self.tp_group, self.cp_group = pg_collection.tp, getattr(pg_collection, "cp", None)
        if self.cp_group is None:
            from megatron.core import parallel_state

            self.cp_group = parallel_state.get_context_parallel_group()
        tp = self.tp_group.size()
        self.num_heads = config.num_attention_heads // tp
        self.num_groups = config.num_query_groups // tp
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(config.kv_channels)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        self.layer_number = layer_number
        _notice_dropout(self.dropout_p)

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if attention_bias is not None:
            raise ValueError("attention_bias is not supported by the packed attention backend")
        if packed_seq_params is not None and packed_seq_params.qkv_format == "thd":
            return self._forward_thd(query, key, value, packed_seq_params)
        return self._forward_sbhd(query, key, value, attention_mask)

    # -- helpers -------------------------------------------------------------------------------
    def _attend(self, q, k, v, *, is_causal: bool = False, mask=None):
        """The one SDPA call: q [..., heads, sq, d], k/v [..., groups, sk, d]; Megatron's scale, GQA without
        copying K/V, attention dropout (training only) from Megatron's tensor-parallel RNG stream."""
        dropout = self.dropout_p if self.training else 0.0
        with _rng_fork(dropout > 0 and not self.config.sequence_parallel):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal,
                                                  scale=self.softmax_scale,
                                                  enable_gqa=self.num_heads != self.num_groups)

    def _sdpa(self, q, k, v, *, is_causal: bool = False, mask=None):
        """One sample: q [heads, sq, d], k/v [groups, sk, d] -> [sq, heads, d]."""
        o = self._attend(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), is_causal=is_causal, mask=mask)
        return o.squeeze(0).transpose(0, 1)

    def _forward_thd(self, query, key, value, params):
        bounds = params.cu_seqlens_q_padded if params.cu_seqlens_q_padded is not None else params.cu_seqlens_q
        bounds = [int(b) for b in bounds.tolist()]
        cp = self.cp_group.size() if self.cp_group is not None else 1
        q_t, k_t, v_t = (x.transpose(0, 1) for x in (query, key, value))  # [heads or groups, T, d]
        if cp == 1:
            outs = self._per_sample(q_t, k_t, v_t, [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a])
        else:
            outs = self._context_parallel(q_t, key, value, bounds, cp)
        out = torch.cat(outs, dim=0) if outs else query.new_zeros(0, self.num_heads, query.shape[-1])
        return out.reshape(out.shape[0], -1)

    def _per_sample(self, q_t, k_t, v_t, segments: list[tuple[int, int]]) -> list:
        """Causal attention inside each segment, outputs in stream order. Segments of up to SHORT tokens
        share one batched call (padded to the longest of them), which saves a kernel launch per sample
        when packs hold many short conversations; longer ones get a call each."""
        short = [(a, b) for a, b in segments if b - a <= SHORT]
        out = {} if len(short) < 2 else dict(zip(short, self._batched(q_t, k_t, v_t, short)))
        return [out[(a, b)] if (a, b) in out else self._sdpa(q_t[:, a:b], k_t[:, a:b], v_t[:, a:b], is_causal=True)
                for a, b in segments]

    def _batched(self, q_t, k_t, v_t, segments: list[tuple[int, int]]) -> list:
        """One SDPA call over several segments, each padded at its end by repeating its last token: the
        padding comes after every real key, so causal masking hides it, and its outputs are dropped.
        Indices are built on the CPU from Python ints: no device sync."""
        lengths = [b - a for a, b in segments]
        width = max(lengths)
        starts, sizes = torch.tensor([a for a, _ in segments]), torch.tensor(lengths)
        offsets = torch.arange(width)
        index = starts[:, None] + torch.minimum(offsets[None, :], sizes[:, None] - 1)  # [n, width]
        real = (offsets[None, :] < sizes[:, None]).reshape(-1).nonzero().squeeze(1)  # rows of the output to keep
        index, real = index.to(q_t.device, non_blocking=True), real.to(q_t.device, non_blocking=True)
        q, k, v = (x[:, index].transpose(0, 1) for x in (q_t, k_t, v_t))  # [n, heads or groups, width, d]
        o = self._attend(q, k, v, is_causal=True)
        flat = o.transpose(1, 2).reshape(len(segments) * width, self.num_heads, -1)
        return list(flat.index_select(0, real).split(lengths))  # each [length, heads, d]

    def _context_parallel(self, q_t, key, value, bounds: list[int], cp: int) -> list:
        """Local queries (chunks r and 2CP-1-r of every sample) against the whole sample's K/V."""
        from megatron.core.tensor_parallel import gather_from_sequence_parallel_region

        rank = self.cp_group.rank()
        # [CP * T_local, groups, d]: rank 0's local stream, then rank 1's, ...; backward reduce-scatters.
        k_all = gather_from_sequence_parallel_region(key, group=self.cp_group)
        v_all = gather_from_sequence_parallel_region(value, group=self.cp_group)
        order = _cp_gather_order(bounds, cp, key.shape[0], key.device)
        k_t, v_t = k_all.index_select(0, order).transpose(0, 1), v_all.index_select(0, order).transpose(0, 1)
        outs = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            c = (b - a) // (2 * cp)  # chunk length; the global sample spans [a, b)
            if c == 0:
                continue
            local = a // cp  # where this sample starts in the local stream
            for half, chunk in enumerate((rank, 2 * cp - 1 - rank)):
                q = q_t[:, local + half * c: local + (half + 1) * c]
                end = a + (chunk + 1) * c  # keys of this sample up to the chunk's end
                k, v = k_t[:, a:end], v_t[:, a:end]
                if end - a == c:
                    outs.append(self._sdpa(q, k, v, is_causal=True))
                else:
                    from torch.nn.attention.bias import causal_lower_right

                    outs.append(self._sdpa(q, k, v, mask=causal_lower_right(c, end - a)))
        return outs

    def _forward_sbhd(self, query, key, value, attention_mask):
        """q [sq, b, heads, d], k/v [sk, b, groups, d], mask [b or 1, 1, sq, sk] True = masked (or None)."""
        sq, sk = query.shape[0], key.shape[0]
        q, k, v = (x.permute(1, 2, 0, 3) for x in (query, key, value))  # [b, heads, s, d]
        if attention_mask is not None:
            out = self._attend(q, k, v, mask=_allowed(attention_mask, sq, sk))
        elif sq == sk:
            out = self._attend(q, k, v, is_causal=True)
        else:  # KV-cache decode: the new queries are the last sq positions
            from torch.nn.attention.bias import causal_lower_right

            out = self._attend(q, k, v, mask=causal_lower_right(sq, sk))
        return out.permute(2, 0, 1, 3).reshape(sq, q.shape[0], -1)


def _allowed(mask: torch.Tensor, sq: int, sk: int) -> torch.Tensor:
    """SDPA's boolean mask (True = attend) from Megatron's (True = masked), each query allowed its own
    key: a left-padding query with every key masked would otherwise give NaN, which then reaches
    real tokens through 0 x NaN in the next layer (Megatron's -10000 fill gives a finite row)."""
    allowed = ~mask
    index = torch.arange(sq, device=mask.device)
    allowed[..., index, sk - sq + index] = True
    return allowed


def _cp_gather_order(bounds: list[int], cp: int, local_tokens: int, device) -> torch.Tensor:
    """Index into the all-gathered K/V that lays every sample's chunks out in global order.

    Rank r's local stream holds, per sample of padded length L starting at a, chunk r then chunk
    2CP-1-r (each L/2CP long) at local offset a/CP. Chunk j of the sample therefore sits on rank
    j (first half) or 2CP-1-j (second half) of the gathered tensor.
    """
    parts = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        c = (b - a) // (2 * cp)
        for j in range(2 * cp):
            rank, half = (j, 0) if j < cp else (2 * cp - 1 - j, 1)
            start = rank * local_tokens + a // cp + half * c
            parts.append(torch.arange(start, start + c, device=device))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long, device=device)


def _rng_fork(active: bool):
    """Attention dropout draws from Megatron's tensor-parallel RNG stream, as DotProductAttention does."""
    if not active:
        import contextlib

        return contextlib.nullcontext()
    from megatron.core import tensor_parallel

    return tensor_parallel.get_cuda_rng_tracker().fork()


def _notice_dropout(p: float) -> None:
    global _dropout_notice_given
    if p > 0 and not _dropout_notice_given and not torch.cuda.is_available():
        import logging

        logging.getLogger(__name__).warning(
            "--attention-dropout %g: on CPU, scaled_dot_product_attention with dropout falls back to its "
            "quadratic math kernel (memory and time grow with the square of each sample's length); "
            "use --attention-dropout 0 for long packs", p)
        _dropout_notice_given = True
