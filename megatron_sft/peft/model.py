"""A LoRA model from the flags: base weights, adapters attached, adapters loaded.

    --load HF dir or full Megatron checkpoint   the base; fresh adapters (or --lora-load's)
    --load LoRA checkpoint (has lora.json)       its base (path and hash from lora.json) + its adapters
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_sft.checkpointing import layout, modelopt_state
from megatron_sft.checkpointing.hf import import_hf_weights
from megatron_sft.checkpointing.megatron_ckpt import load_model_weights
from megatron_sft.errors import UserError
from megatron_sft.peft import record
from megatron_sft.peft.lora import LoraSpec, attach_lora, is_lora_key

from megatron_sft.config import RunConfig

log = logging.getLogger(__name__)


@dataclass
class LoraModel:
    spec: LoraSpec
    base: record.Base
    record_text: str  # lora.json of every checkpoint this run saves
    checkpoint_dir: Path | None  # the LoRA checkpoint --load named, if any
    iteration: int | None


def _base(cfg: RunConfig) -> tuple[record.Base, Path | None, int | None]:
    """(base, LoRA checkpoint dir or None, its iteration)."""
    if cfg.checkpoint.load_format == "megatron":
        ckpt_dir, iteration = layout.latest_checkpoint_dir(cfg.checkpoint.load, cfg.checkpoint.ckpt_step, deep=True)
        saved = record.read_record(ckpt_dir)
        if saved is not None:
            return record.base_of(saved, ckpt_dir), ckpt_dir, iteration
        return record.describe_base(cfg.checkpoint.load, "megatron"), None, None
    if cfg.checkpoint.load_format == "hf":
        return record.describe_base(cfg.checkpoint.hf_model_path or cfg.checkpoint.load, "hf"), None, None
    raise UserError("--peft lora needs a base model: --load a Hugging Face directory or a Megatron checkpoint")


def lora_base(cfg: RunConfig) -> record.Base:
    """The base of the LoRA checkpoint in --load, as its lora.json names it (not re-hashed)."""
    saved = record.read_record(cfg.checkpoint.load_iteration_dir) if cfg.checkpoint.load_format == "megatron" else None
    if saved is None:
        raise UserError(f"--load {cfg.checkpoint.load}: not a LoRA checkpoint (no {record.RECORD}); no adapter to "
                        "export")
    return record.Base(**saved["base"])


def _load_base(base: record.Base, chunks: list, dtype: torch.dtype) -> None:
    if base.format == "hf":
        import_hf_weights(chunks, base.path, dtype)
        return
    ckpt_dir, _ = layout.latest_checkpoint_dir(base.path, deep=True)
    if record.read_record(ckpt_dir) is not None:
        raise UserError(f"{base.path} is a LoRA checkpoint; a LoRA base must be a full model: export it with "
                        "tools/convert.py --merge-lora and train on that")
    if layout.CheckpointDir(ckpt_dir).is_quantized:
        raise UserError(f"{base.path} is quantized ({modelopt_state.describe(ckpt_dir)}); LoRA on a quantized base "
                        "is not supported: fine-tune it in full (quantization-aware training), or train LoRA on the "
                        "unquantized model, merge it (convert.sh MERGE_LORA=1) and quantize the result")
    load_model_weights(ckpt_dir, chunks)


def build_lora_model(cfg: RunConfig, chunks: list, dtype: torch.dtype, load_adapters: bool = True) -> LoraModel:
    """Load the base into `chunks`, freeze it, attach adapters and fill them (unless a resume will)."""
    spec = LoraSpec.from_config(cfg)
    base, ckpt_dir, iteration = _base(cfg)
    _load_base(base, chunks, dtype)
    count = attach_lora(chunks, spec)
    if load_adapters and ckpt_dir is not None:
        load_model_weights(ckpt_dir, chunks, keep=is_lora_key)
    elif cfg.lora.lora_load:
        from megatron_sft.peft.hf_adapter import load_peft_adapter

        load_peft_adapter(chunks, cfg.lora.lora_load, spec)
    _log_trainable(chunks, count, spec)
    return LoraModel(spec, base, record.record_text(spec, base), ckpt_dir, iteration)


def _log_trainable(chunks: list, count: int, spec: LoraSpec) -> None:
    params = [p for c in chunks for p in c.parameters()]
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    log.info("LoRA r=%d alpha=%g on %d linear layers (%s): %.3fM trainable parameters of %.2fM on this rank (%.3f%%)",
             spec.rank, spec.alpha, count, " ".join(spec.targets), trainable / 1e6, total / 1e6,
             100.0 * trainable / max(total, 1))
