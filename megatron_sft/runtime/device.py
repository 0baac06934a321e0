"""Choose the device and the transformer implementation once, before any model is built."""

from __future__ import annotations

import importlib.util
import logging

import torch

from megatron_sft.errors import UserError
from megatron_sft.runtime import cpu_mode

log = logging.getLogger(__name__)


def transformer_engine_available() -> bool:
    return importlib.util.find_spec("transformer_engine") is not None


def resolve_device(requested: str) -> str:
    """'auto' -> cuda when available, else cpu. 'cuda' without CUDA is a user error."""
    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        raise UserError("--device cuda: no CUDA device is visible; use --device cpu (or auto)")
    if requested == "cpu" or not has_cuda:
        return "cpu"
    return "cuda"


def resolve_transformer_impl(requested: str | None, device: str) -> str:
    """Transformer Engine on GPU when installed; the local spec otherwise."""
    if requested in (None, "auto"):
        return "transformer_engine" if device == "cuda" and transformer_engine_available() else "local"
    if requested == "transformer_engine":
        if device == "cpu":
            raise UserError("--transformer-impl transformer_engine needs a GPU; use --transformer-impl local on CPU")
        if not transformer_engine_available():
            raise UserError(
                "--transformer-impl transformer_engine: Transformer Engine is not installed; "
                "pip install 'megatron_sft[gpu]' or use --transformer-impl local"
            )
    return requested


def setup_device(args) -> None:
    """Resolve args.device / args.transformer_impl in place and switch CPU mode on if needed."""
    args.device = resolve_device(getattr(args, "device", "auto") or "auto")
    args.transformer_impl = resolve_transformer_impl(getattr(args, "transformer_impl", None), args.device)
    if args.device == "cpu":
        cpu_mode.enable()
    else:
        import os

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
