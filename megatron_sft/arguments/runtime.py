"""Where the run executes. Both values are decided later by megatron_sft.runtime.device, which
may import torch: parsing stays cheap and only records what was asked for."""

from __future__ import annotations

from argparse import ArgumentParser


def add_runtime_args(parser: ArgumentParser) -> None:
    g = parser.add_argument_group("runtime")
    g.add_argument(
        "--device",
        choices=["auto", "cuda", "cpu"],
        help="auto: CUDA when available, else the CPU mode (gloo)",
    )
    g.add_argument(
        "--transformer-impl",
        choices=["local", "transformer_engine"],
        help="default: transformer_engine on GPU when installed, else local",
    )
    g.add_argument(
        "--attention-backend",
        choices=["auto", "flash", "fused", "unfused", "local"],
        help="auto: packed attention (per-sample SDPA from cu_seqlens, context parallelism); local: Megatron's "
        "DotProductAttention with an explicit S x S mask (reference); flash/fused/unfused: Transformer Engine "
        "kernels, not available for training yet",
    )
