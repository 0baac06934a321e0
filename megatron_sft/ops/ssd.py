"""Mamba-2's state-space duality (SSD) scan in PyTorch, chunked as mamba_ssm's kernels are, with their signatures.

Per head h (heads share the B and C of their group), for each token t:

    state_t = exp(dt_t * A_h) * state_{t-1} + dt_t * x_t (outer) B_t        [headdim x dstate]
    y_t     = C_t . state_t + D_h * x_t,  then y_t * silu(z_t) when z is given

dt = dt + dt_bias, softplus'd (dt_softplus; values above 20 kept as they are) and clamped to dt_limit. With
`seq_idx` (packed samples, non-decreasing ids) the state is zero again wherever the id changes, including in the
middle of a chunk; `initial_states` are the state before the first token of sample id 0.

Chunked: within a chunk of Q tokens the outputs are one masked matrix product (Q x Q per head); the state passes from
chunk to chunk in a loop. Memory is linear in the sequence length: the quadratic part never exceeds a chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from megatron_sft.ops.causal_conv1d import causal_conv1d_fn
from megatron_sft.ops.gated_norm import rmsnorm_fn

NO_LIMIT = (0.0, float("inf"))


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """fp32 for half-precision inputs and fp32 (as the kernels: high precision before the cumulative sums); fp64 stays
    fp64 (the tests' exact references)."""
    return torch.promote_types(t.dtype, torch.float32)


def step_sizes(dt, dt_bias=None, dt_softplus=False, dt_limit=NO_LIMIT) -> torch.Tensor:
    """dt as the scan uses it, in the compute dtype."""
    dt = dt.to(compute_dtype(dt))
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if dt_softplus:
        dt = torch.where(dt <= 20.0, F.softplus(dt), dt)
    if tuple(dt_limit) != NO_LIMIT:
        dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    return dt


def _chunks(t: torch.Tensor, q: int) -> torch.Tensor:
    """[b, L, ...] -> [b, L/q, q, ...]."""
    return t.unflatten(1, (t.shape[1] // q, q))


def chunked_scan(x, dt, A, B, C, chunk_size: int, seq_idx=None, initial_states=None):
    """The recurrence above without D and z: (y [b, L, h, p], final state [b, h, p, n]), both in the compute dtype
    (fp32; fp64 for fp64 inputs). dt is final (step_sizes); x [b, L, h, p], A [h], B and C [b, L, g, n],
    seq_idx [b, L], initial_states [b, h, p, n]."""
    b, length, h, p = x.shape
    groups, n = B.shape[2], B.shape[3]
    q = chunk_size
    pad = (-length) % q
    seq = (seq_idx.long() if seq_idx is not None else x.new_zeros(b, length, dtype=torch.long))
    work = compute_dtype(x)
    x, dt, B, C = x.to(work), dt.to(work), B.to(work), C.to(work)
    if pad:  # padded steps: dt 0 (no decay, no input), the last sample's id: nothing changes
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        dt = F.pad(dt, (0, 0, 0, pad))
        seq = torch.cat([seq, seq[:, -1:].expand(b, pad)], dim=1)
    B, C = (t.repeat_interleave(h // groups, dim=2) for t in (B, C))  # each head its group's
    x, dt, B, C, seq = (_chunks(t, q) for t in (x, dt, B, C, seq))  # [b, c, q, ...]
    a = torch.cumsum(dt * A.to(work), dim=2)  # [b, c, q, h]: log-decay from the chunk's start
    last = seq[:, :, -1]  # [b, c]: the sample each chunk ends in
    # within a chunk: y_i += sum_{j <= i, same sample} (C_i . B_j) exp(a_i - a_j) dt_j x_j
    causal = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()
    same = (seq[:, :, :, None] == seq[:, :, None, :]) & causal  # [b, c, i, j]
    log_decay = a[:, :, :, None, :] - a[:, :, None, :, :]  # [b, c, i, j, h]
    decay = torch.where(same[..., None], log_decay, torch.full_like(log_decay, float("-inf"))).exp()
    scores = torch.einsum("bcihn,bcjhn->bcijh", C, B) * decay
    y = torch.einsum("bcijh,bcjh,bcjhp->bcihp", scores, dt, x)
    # each chunk's contribution to the state at its end, from the tokens of the sample it ends in
    to_end = (a[:, :, -1:, :] - a).exp() * (seq == last[:, :, None])[..., None]  # [b, c, q, h]
    contrib = torch.einsum("bcjh,bcjh,bcjhn,bcjhp->bchpn", to_end, dt, B, x)
    state = initial_states.to(work) if initial_states is not None else x.new_zeros(b, h, p, n)
    before = seq.new_zeros(b)  # the sample the state belongs to: id 0 before the first chunk
    entering = []
    for c in range(x.shape[1]):
        entering.append((state, before))
        carried = (last[:, c] == before).to(state.dtype)[:, None, None, None]  # the chunk continues that sample
        state = state * a[:, c, -1, :].exp()[:, :, None, None] * carried + contrib[:, c]
        before = last[:, c]
    states = torch.stack([s for s, _ in entering], dim=1)  # [b, c, h, p, n]
    owners = torch.stack([o for _, o in entering], dim=1)  # [b, c]
    reach = a.exp() * (seq == owners[:, :, None])[..., None]  # [b, c, q, h]: tokens of the sample entering
    y = y + torch.einsum("bcihn,bchpn,bcih->bcihp", C, states, reach)
    return y.flatten(1, 2)[:, :length], state


def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                              seq_idx=None, cu_seqlens=None, dt_softplus=False, dt_limit=NO_LIMIT,
                              return_final_states=False, return_varlen_states=False):
    """mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined: out [b, L, h, p] in x's dtype (and the final
    state [b, h, p, n] in fp32, fp64 for fp64 inputs, with return_final_states)."""
    if return_varlen_states:
        raise NotImplementedError("return_varlen_states (dynamic batching) needs mamba_ssm's CUDA kernels")
    y, final = chunked_scan(x, step_sizes(dt, dt_bias, dt_softplus, dt_limit), A, B, C, chunk_size, seq_idx,
                            initial_states)
    if D is not None:
        D = D.to(y.dtype)
        y = y + x.to(y.dtype) * (D[:, None] if D.dim() == 1 else D)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    y = y.to(x.dtype)
    return (y, final) if return_final_states else y


def mamba_split_conv1d_scan_combined(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, chunk_size,
                                     initial_states=None, seq_idx=None, dt_limit=NO_LIMIT, return_final_states=False,
                                     activation="silu", rmsnorm_weight=None, rmsnorm_eps=1e-6, outproj_weight=None,
                                     outproj_bias=None, headdim=None, ngroups=1, norm_before_gate=True):
    """mamba_ssm's fused Mamba-2 mixer core: split [z0 x0 | z | x B C | dt], the causal conv over x B C, the scan
    (dt softplus'd), then y * silu(z) (or the gated RMSNorm with rmsnorm_weight), the optional output projection;
    with a non-SSM part z0 x0, silu(z0) * x0 in front. zxbcdt [b, L, d]; conv1d_weight [conv dim, width]."""
    heads = D.shape[0]
    headdim = headdim if D.dim() == 1 else D.shape[1]
    dim = heads * headdim
    state = (conv1d_weight.shape[0] - dim) // ngroups // 2
    nonssm = (zxbcdt.shape[-1] - 2 * dim - 2 * ngroups * state - heads) // 2
    zx0, z, xbc, dt = torch.split(zxbcdt, [2 * nonssm, dim, dim + 2 * ngroups * state, heads], dim=-1)
    xbc = causal_conv1d_fn(xbc.transpose(1, 2), conv1d_weight, conv1d_bias, seq_idx=seq_idx,
                           activation=activation).transpose(1, 2)
    x, B, C = torch.split(xbc, [dim, ngroups * state, ngroups * state], dim=-1)
    x = x.unflatten(-1, (heads, headdim))
    B, C = (t.unflatten(-1, (ngroups, state)) for t in (B, C))
    gate = None if rmsnorm_weight is not None else z.unflatten(-1, (heads, headdim))
    y, final = mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=D, z=gate, dt_bias=dt_bias,
                                         initial_states=initial_states, seq_idx=seq_idx, dt_softplus=True,
                                         dt_limit=dt_limit, return_final_states=True)
    out = y.flatten(-2)
    if rmsnorm_weight is not None:
        out = rmsnorm_fn(out, rmsnorm_weight, None, z, rmsnorm_eps, dim // ngroups, norm_before_gate)
    if nonssm:
        z0, x0 = zx0.chunk(2, dim=-1)
        out = torch.cat([F.silu(z0) * x0, out], dim=-1)
    if outproj_weight is not None:
        out = F.linear(out, outproj_weight, outproj_bias)
    return (out, final) if return_final_states else out
