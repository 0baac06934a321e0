"""Put weights into freshly built model chunks from whatever --load points at."""

from __future__ import annotations

import logging
from pathlib import Path

from megatron_sft.checkpointing import layout
from megatron_sft.checkpointing.hf import import_hf_weights
from megatron_sft.checkpointing.megatron_ckpt import load_model_weights
from megatron_sft.config import dtype_from_name, params_dtype

log = logging.getLogger(__name__)


def args_record(args) -> dict:
    """The resolved arguments as JSON-safe values, saved next to every checkpoint."""
    record = {}
    for key, value in sorted(vars(args).items()):
        if value is None or isinstance(value, (bool, int, float, str)):
            record[key] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (bool, int, float, str)) for v in value):
            record[key] = list(value)
    return record


def hf_assets_source(args) -> Path | None:
    """Where the HF config/tokenizer of this model live: the HF dir, or a checkpoint's hf_assets/."""
    if getattr(args, "load_format", None) == "hf":
        return Path(args.hf_model_path or args.load)
    if getattr(args, "load_format", None) == "megatron":
        ckpt_dir, _ = layout.latest_checkpoint_dir(args.load)
        if layout.hf_assets_dir(ckpt_dir).is_dir():
            return layout.hf_assets_dir(ckpt_dir)
    hf = getattr(args, "hf_model_path", None)
    return Path(hf) if hf else None


def import_dtype(args):
    name = getattr(args, "import_dtype", None)
    return dtype_from_name(name) if name else params_dtype(args)


def load_weights(args, chunks: list) -> int | None:
    """Load per args.load_format; returns the checkpoint's iteration (None for HF / release)."""
    fmt = getattr(args, "load_format", None)
    if getattr(args, "peft", None) == "lora":  # base weights, then the adapters of the LoRA checkpoint
        from megatron_sft.peft.model import build_lora_model

        return build_lora_model(args, chunks, import_dtype(args)).iteration
    if fmt == "hf":
        import_hf_weights(chunks, args.hf_model_path or args.load, import_dtype(args))
        return None
    if fmt == "megatron":
        ckpt_dir, iteration = layout.latest_checkpoint_dir(args.load)
        load_model_weights(ckpt_dir, chunks)
        return iteration
    log.info("no --load given: training starts from random initialisation")
    return None
