"""causal_conv1d's causal depthwise convolution in PyTorch: out[t] = act(bias + sum_k w[k] * x[t - (W-1) + k]).

A tap that reaches before the start of the sequence, or into another packed sample (`seq_idx` differs), reads zero,
so no convolution window crosses a sample boundary; `initial_states` (the W-1 inputs before the first) replace the
zeros before the start of an unpacked sequence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d_fn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     seq_idx: torch.Tensor | None = None, initial_states: torch.Tensor | None = None,
                     return_final_states: bool = False, final_states_out: torch.Tensor | None = None,
                     activation: str | None = None):
    """x [batch, dim, seqlen], weight [dim, width], bias [dim], seq_idx [batch, seqlen] (int, non-decreasing),
    initial_states [batch, dim, width - 1]; activation None, "silu" or "swish". Returns out [batch, dim, seqlen]
    (and the last width - 1 inputs, the state a next call continues from, with return_final_states)."""
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation {activation!r}: None, 'silu' or 'swish'")
    if seq_idx is not None and initial_states is not None:
        raise ValueError("initial_states with seq_idx: a packed sequence starts every sample from zeros")
    _, _, length = x.shape
    width = weight.shape[-1]
    before = initial_states if initial_states is not None else x.new_zeros(*x.shape[:2], width - 1)
    padded = torch.cat([before.to(x.dtype), x], dim=-1)
    work = torch.promote_types(x.dtype, torch.float32)  # fp32 sums for half-precision inputs, as the kernel
    out = torch.zeros_like(x, dtype=work) if bias is None else bias.to(work)[None, :, None].expand_as(x).clone()
    for k in range(width):
        shift = width - 1 - k  # this tap reads x[t - shift]
        tap = padded[..., k:k + length].to(work) * weight[:, k].to(work)[None, :, None]
        if seq_idx is not None and shift:
            same = torch.zeros_like(seq_idx, dtype=torch.bool)
            same[:, shift:] = seq_idx[:, shift:] == seq_idx[:, :-shift]
            tap = tap * same[:, None, :]
        out = out + tap
    if activation is not None:
        out = F.silu(out)
    out = out.to(x.dtype)
    if not return_final_states:
        return out
    final = padded[..., -(width - 1):] if width > 1 else x.new_zeros(*x.shape[:2], 0)
    if final_states_out is not None:
        final_states_out.copy_(final)
        final = final_states_out
    return out, final
