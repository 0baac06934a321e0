"""An RMSNorm for the local (non-Transformer-Engine) spec that works with sequence parallelism.

Megatron-Core's local spec wraps ``torch.nn.RMSNorm``, which asserts when sequence parallelism
is on. With sequence parallelism each TP rank normalises its own slice of the sequence, so the
norm's weight gradient is a partial sum: marking the weight ``sequence_parallel`` makes
Megatron's ``finalize_model_grads`` all-reduce it over the tensor-parallel group.
"""

from __future__ import annotations

import torch


class RMSNorm(torch.nn.Module):
    """y = x / rms(x) * weight, computed in fp32 like Hugging Face's Qwen/Llama norms."""

    def __init__(self, config, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        setattr(self.weight, "sequence_parallel", bool(config.sequence_parallel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)
