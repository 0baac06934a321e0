"""The PyTorch state-space kernels (megatron_sft/ops) against references written token by token here, and against
transformers' own PyTorch implementations: the SSD scan (chunked) = the recurrence it computes, packed = each sample
alone, the causal conv = torch's conv1d on each sample alone, the gated RMSNorm = transformers' Zamba2 one."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from megatron_sft.ops.causal_conv1d import causal_conv1d_fn
from megatron_sft.ops.gated_norm import GatedRMSNorm, rmsnorm_fn
from megatron_sft.ops.ssd import mamba_chunk_scan_combined, mamba_split_conv1d_scan_combined

pytestmark = pytest.mark.numerics
F64 = torch.float64


def recurrence(x, dt, A, B, C, D=None, z=None, seq_idx=None, initial_states=None):
    """One token at a time: state = exp(dt A) state + dt x B^T; y = C state + D x; the state is zero again where
    the sample id changes; initial_states before sample 0. dt as given (already softplus'd and clamped)."""
    b, length, h, p = x.shape
    g, n = B.shape[2:]
    state = initial_states.clone() if initial_states is not None else torch.zeros(b, h, p, n, dtype=x.dtype)
    seq = seq_idx if seq_idx is not None else torch.zeros(b, length, dtype=torch.long)
    previous = torch.zeros(b, dtype=torch.long)
    ys = []
    for t in range(length):
        fresh = (seq[:, t] != previous).to(x.dtype)[:, None, None, None]
        state = state * (1 - fresh)
        Bh = B[:, t].repeat_interleave(h // g, dim=1)  # [b, h, n]
        Ch = C[:, t].repeat_interleave(h // g, dim=1)
        state = state * torch.exp(dt[:, t] * A)[:, :, None, None] + (dt[:, t, :, None] * x[:, t])[..., None] \
            * Bh[:, :, None, :]
        y = torch.einsum("bhpn,bhn->bhp", state, Ch)
        if D is not None:
            y = y + x[:, t] * (D[:, None] if D.dim() == 1 else D)
        if z is not None:
            y = y * F.silu(z[:, t])
        ys.append(y)
        previous = seq[:, t]
    return torch.stack(ys, dim=1), state


def inputs(length, heads=4, headdim=3, groups=2, state=5, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, heads, headdim, generator=g, dtype=F64)
    dt = torch.rand(batch, length, heads, generator=g, dtype=F64) * 0.5 + 0.05
    A = -torch.rand(heads, generator=g, dtype=F64) * 2 - 0.1
    B = torch.randn(batch, length, groups, state, generator=g, dtype=F64)
    C = torch.randn(batch, length, groups, state, generator=g, dtype=F64)
    return x, dt, A, B, C


SEQ_PATTERNS = {  # sample lengths of one packed row of 21 tokens: boundaries inside and at chunk edges
    "one": [21], "inside": [3, 9, 9], "edges": [8, 8, 5], "short": [1, 1, 6, 2, 11]}


def seq_idx_of(lengths, batch=2):
    return torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)).expand(batch, -1).contiguous()


@pytest.mark.parametrize(("chunk", "pattern", "groups"), list(itertools.product([1, 4, 8, 32], SEQ_PATTERNS, [1, 2])))
def test_chunked_scan_is_the_recurrence(chunk, pattern, groups):
    x, dt, A, B, C = inputs(21, groups=groups)
    seq = seq_idx_of(SEQ_PATTERNS[pattern]) if pattern != "one" else None
    D, z = torch.randn(4, dtype=F64), torch.randn(*x.shape, dtype=F64)
    got, final = mamba_chunk_scan_combined(x, dt, A, B, C, chunk, D=D, z=z, seq_idx=seq, return_final_states=True)
    want, want_final = recurrence(x, dt, A, B, C, D=D, z=z, seq_idx=seq)
    assert got.dtype == final.dtype == F64  # fp64 in, fp64 throughout (fp32 for fp32 and half-precision inputs)
    assert torch.allclose(got, want, atol=1e-12, rtol=0), (got - want).abs().max()
    assert torch.allclose(final, want_final, atol=1e-12, rtol=0)


def test_dt_bias_softplus_limit_initial_states_and_headdim_d():
    x, dt, A, B, C = inputs(13)
    bias, D = torch.randn(4, dtype=F64), torch.randn(4, 3, dtype=F64)
    init = torch.randn(2, 4, 3, 5, dtype=F64)
    raw = torch.randn(2, 13, 4, dtype=F64) * 3
    raw[0, 0, 0] = 25.0  # above 20: the kernels keep it as it is, without softplus
    got = mamba_chunk_scan_combined(x, raw, A, B, C, 4, D=D, dt_bias=bias, initial_states=init, dt_softplus=True,
                                    dt_limit=(0.01, 2.0))
    steps = raw + bias
    steps = torch.where(steps <= 20, F.softplus(steps), steps).clamp(0.01, 2.0)
    want, _ = recurrence(x, steps, A, B, C, D=D, initial_states=init)
    assert torch.allclose(got, want, atol=1e-12, rtol=0)


def test_packed_samples_equal_each_sample_alone_and_gradients_agree():
    """A packed row == every sample scanned alone (also their gradients), boundaries inside chunks."""
    lengths = [5, 11, 4]
    x, dt, A, B, C = (t.requires_grad_() for t in inputs(20, batch=1))
    packed = mamba_chunk_scan_combined(x, dt, A, B, C, 8, seq_idx=seq_idx_of(lengths, 1))
    pieces, start = [], 0
    for n in lengths:
        part = slice(start, start + n)
        pieces.append(mamba_chunk_scan_combined(x[:, part], dt[:, part], A, B[:, part], C[:, part], 8))
        start += n
    alone = torch.cat(pieces, dim=1)
    assert torch.allclose(packed, alone, atol=1e-12, rtol=0)
    weights = torch.randn_like(packed)
    grads_packed = torch.autograd.grad((packed * weights).sum(), (x, dt, A, B, C))
    grads_alone = torch.autograd.grad((alone * weights).sum(), (x, dt, A, B, C))
    want = torch.autograd.grad((recurrence(x, dt, A, B, C, seq_idx=seq_idx_of(lengths, 1))[0] * weights).sum(),
                               (x, dt, A, B, C))
    for got_p, got_a, ref in zip(grads_packed, grads_alone, want):
        assert torch.allclose(got_p, ref, atol=1e-10) and torch.allclose(got_a, ref, atol=1e-10)


def test_causal_conv_does_not_cross_samples():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 6, 17, generator=g, dtype=F64)
    w, bias = torch.randn(6, 4, generator=g, dtype=F64), torch.randn(6, generator=g, dtype=F64)
    lengths = [2, 9, 6]
    got = causal_conv1d_fn(x, w, bias, seq_idx=seq_idx_of(lengths, 1), activation="silu")
    pieces, start = [], 0
    for n in lengths:
        alone = F.conv1d(x[..., start:start + n], w[:, None, :], bias, padding=3, groups=6)[..., :n]
        pieces.append(F.silu(alone))
        start += n
    assert torch.allclose(got, torch.cat(pieces, dim=-1), atol=1e-12, rtol=0)
    init = torch.randn(1, 6, 3, generator=g, dtype=F64)
    out, final = causal_conv1d_fn(x, w, None, initial_states=init, return_final_states=True)
    whole = F.conv1d(torch.cat([init, x], dim=-1), w[:, None, :], groups=6)
    assert torch.allclose(out, whole, atol=1e-12) and torch.equal(final, x[..., -3:])


@pytest.mark.parametrize("norm_before_gate", [False, True])
def test_gated_rmsnorm(norm_before_gate):
    g = torch.Generator().manual_seed(2)
    x, z = torch.randn(3, 7, 12, generator=g), torch.randn(3, 7, 12, generator=g)
    norm = GatedRMSNorm(12, eps=1e-5, group_size=4, norm_before_gate=norm_before_gate)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(12, generator=g))
    got = norm(x, z)
    gated = x * F.silu(z) if not norm_before_gate else x
    groups = gated.unflatten(-1, (3, 4))
    want = (groups / torch.sqrt(groups.pow(2).mean(-1, keepdim=True) + 1e-5)).flatten(-2) * norm.weight
    want = want * F.silu(z) if norm_before_gate else want
    assert torch.allclose(got, want, atol=1e-6)
    if not norm_before_gate:  # transformers' own gated norm (Zamba2, NemotronH's mixer norm): an independent one
        from transformers.models.zamba2.modeling_zamba2 import Zamba2RMSNormGated

        theirs = Zamba2RMSNormGated(12, group_size=4, eps=1e-5)
        theirs.weight.data.copy_(norm.weight.data)
        assert torch.allclose(got, theirs(x, gate=z), atol=1e-6)


def test_split_conv_scan_is_conv_then_scan_then_gate():
    """The fused mixer core = the conv, the scan and the gate called one after another (and the gated-norm and
    output-projection variants = the norm and the projection applied after it)."""
    g = torch.Generator().manual_seed(3)
    heads, headdim, groups, state, width, length = 4, 3, 2, 5, 4, 19
    dim, conv_dim = heads * headdim, heads * headdim + 2 * groups * state
    zxbcdt = torch.randn(1, length, 2 * dim + 2 * groups * state + heads, generator=g, dtype=F64)
    w, cb = torch.randn(conv_dim, width, generator=g, dtype=F64), torch.randn(conv_dim, generator=g, dtype=F64)
    dt_bias, A, D = torch.randn(heads, dtype=F64), -torch.rand(heads, dtype=F64) - 0.1, torch.randn(heads, dtype=F64)
    seq = seq_idx_of([7, 12], 1)
    got = mamba_split_conv1d_scan_combined(zxbcdt, w, cb, dt_bias, A, D, 8, seq_idx=seq, headdim=headdim,
                                           ngroups=groups)
    z, xbc, dt = torch.split(zxbcdt, [dim, conv_dim, heads], dim=-1)
    xbc = causal_conv1d_fn(xbc.transpose(1, 2), w, cb, seq_idx=seq, activation="silu").transpose(1, 2)
    x, B, C = torch.split(xbc, [dim, groups * state, groups * state], dim=-1)
    steps = F.softplus(dt + dt_bias)
    want, _ = recurrence(x.unflatten(-1, (heads, headdim)), steps, A, B.unflatten(-1, (groups, state)),
                         C.unflatten(-1, (groups, state)), D=D, z=z.unflatten(-1, (heads, headdim)), seq_idx=seq)
    assert torch.allclose(got, want.flatten(-2), atol=1e-12, rtol=0)
    weight, proj = torch.randn(dim, dtype=F64), torch.randn(6, dim, dtype=F64)
    normed = mamba_split_conv1d_scan_combined(zxbcdt, w, cb, dt_bias, A, D, 8, seq_idx=seq, headdim=headdim,
                                              ngroups=groups, rmsnorm_weight=weight, rmsnorm_eps=1e-5,
                                              norm_before_gate=False, outproj_weight=proj)
    plain, _ = recurrence(x.unflatten(-1, (heads, headdim)), steps, A, B.unflatten(-1, (groups, state)),
                          C.unflatten(-1, (groups, state)), D=D, seq_idx=seq)
    want = F.linear(rmsnorm_fn(plain.flatten(-2), weight, None, z, 1e-5, dim // groups, False), proj)
    assert torch.allclose(normed, want, atol=1e-10)


def test_half_precision_inputs_are_scanned_in_fp32():
    """bf16 in: bf16 out, the final state in fp32 (as mamba_ssm returns them); within bf16's rounding of the exact
    values (a scan in bf16 would be off by far more over 64 tokens)."""
    x, dt, A, B, C = inputs(64, batch=1)
    got, final = mamba_chunk_scan_combined(*(t.bfloat16() for t in (x, dt, A, B, C)), 16, return_final_states=True)
    want, want_final = recurrence(*(t.bfloat16().double() for t in (x, dt, A, B, C)))
    assert got.dtype == torch.bfloat16 and final.dtype == torch.float32
    assert (got.double() - want).abs().max() <= 0.01 * want.abs().max()
    assert torch.allclose(final.double(), want_final, atol=1e-4, rtol=1e-4)
