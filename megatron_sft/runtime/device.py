"""Choose the device and the transformer implementation once, before any model is built."""

from __future__ import annotations

import importlib.util
import logging

import torch

from megatron_sft.errors import UserError
from megatron_sft.runtime import cpu_mode

from megatron_sft.config import RunConfig

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


def resolve_transformer_impl(requested: str | None, device: str, training: bool = False) -> str:
    """The one place the layer spec is chosen. Training: the local spec, whose attention keeps packed samples
    apart (packed THD attention, or Megatron's own with an explicit mask); Transformer Engine's THD path is not
    verified on a GPU yet. Inference: Transformer Engine on GPU when installed, the local spec otherwise."""
    if training:
        if requested == "transformer_engine":
            raise UserError("--transformer-impl transformer_engine: packed SFT training on Transformer Engine is "
                            "not available yet; use --transformer-impl local (packed attention, --attention-backend "
                            "auto)")
        return "local"
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


def setup_device(cfg: RunConfig, training: bool = False):
    """The config with its device and layer spec resolved; switches CPU mode on if needed."""
    device = resolve_device(cfg.runtime.device or "auto")
    cfg = cfg.replace(device=device,
                      transformer_impl=resolve_transformer_impl(cfg.runtime.transformer_impl, device, training))
    if device == "cpu":
        cpu_mode.enable()
    else:
        import os

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return cfg
