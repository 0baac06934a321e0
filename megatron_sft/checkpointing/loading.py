"""Put weights into freshly built model chunks from whatever --load points at."""

from __future__ import annotations

import logging
from pathlib import Path

from megatron_sft.checkpointing import layout
from megatron_sft.checkpointing.hf import import_hf_weights
from megatron_sft.checkpointing.megatron_ckpt import load_model_weights
from megatron_sft.config import dtype_from_name, params_dtype

log = logging.getLogger(__name__)


def hf_assets_source(cfg) -> Path | None:
    """Where the HF config/tokenizer of this model live: the HF dir, or a checkpoint's hf_assets/."""
    if cfg.checkpoint.load_format == "hf":
        return Path(cfg.checkpoint.hf_model_path or cfg.checkpoint.load)
    if cfg.checkpoint.load_format == "megatron":
        ckpt_dir = Path(cfg.checkpoint.load_iteration_dir)
        if layout.hf_assets_dir(ckpt_dir).is_dir():
            return layout.hf_assets_dir(ckpt_dir)
    hf = cfg.checkpoint.hf_model_path
    return Path(hf) if hf else None


def import_dtype(cfg):
    name = cfg.checkpoint.import_dtype
    return dtype_from_name(name) if name else params_dtype(cfg)


def load_weights(cfg, chunks: list) -> int | None:
    """Load per cfg.checkpoint.load_format; returns the checkpoint's iteration (None for HF / release)."""
    fmt = cfg.checkpoint.load_format
    if cfg.lora.peft == "lora":  # base weights, then the adapters of the LoRA checkpoint
        from megatron_sft.peft.model import build_lora_model

        return build_lora_model(cfg, chunks, import_dtype(cfg)).iteration
    if fmt == "hf":
        import_hf_weights(chunks, cfg.checkpoint.hf_model_path or cfg.checkpoint.load, import_dtype(cfg))
        return None
    if fmt == "megatron":
        ckpt_dir, iteration = layout.latest_checkpoint_dir(cfg.checkpoint.load, cfg.checkpoint.ckpt_step, deep=True)
        load_model_weights(ckpt_dir, chunks)
        return iteration
    log.info("no --load given: training starts from random initialisation")
    return None
