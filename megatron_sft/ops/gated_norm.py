"""mamba_ssm's grouped gated RMSNorm in PyTorch: normalise each group of `group_size` channels by its RMS, scale by
the weight, and gate with silu(z) before (norm_before_gate=False) or after the normalisation. In fp32, the result in
the input's dtype (fp64 stays fp64)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rmsnorm_fn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, z: torch.Tensor | None = None,
               eps: float = 1e-6, group_size: int | None = None, norm_before_gate: bool = True) -> torch.Tensor:
    dtype = x.dtype
    work = torch.promote_types(dtype, torch.float32)
    h = x.to(work)
    if z is not None and not norm_before_gate:
        h = h * F.silu(z.to(work))
    size = group_size or h.shape[-1]
    groups = h.unflatten(-1, (h.shape[-1] // size, size))
    h = (groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + eps)).flatten(-2)
    h = h * weight.to(work) + (bias.to(work) if bias is not None else 0.0)
    if z is not None and norm_before_gate:
        h = h * F.silu(z.to(work))
    return h.to(dtype)


class GatedRMSNorm(torch.nn.Module):
    """mamba_ssm.ops.triton.layernorm_gated.RMSNorm's interface: forward(x, z=None)."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, group_size: int | None = None,
                 norm_before_gate: bool = True, device=None, dtype=None):
        super().__init__()
        self.eps, self.group_size, self.norm_before_gate = eps, group_size, norm_before_gate
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)
        if group_size is not None and hidden_size % group_size:
            raise ValueError(f"hidden size {hidden_size} is not a multiple of the group size {group_size}")

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        return rmsnorm_fn(x, self.weight, self.bias, z, self.eps, self.group_size, self.norm_before_gate)
