"""What --load points at, decided once: a Hugging Face directory, a Megatron checkpoint, or a LoRA run on
either. Every application (training, generation, MMLU, conversion) gets its weights and its tokenizer here."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from megatron_sft.config import RunConfig
from megatron_sft.checkpointing import layout, modelopt_state
from megatron_sft.checkpointing.hf import import_hf_weights
from megatron_sft.checkpointing.megatron_ckpt import load_model_weights
from megatron_sft.to_mcore import dtype_from_name, transformer_config
from megatron_sft.errors import UserError
from megatron_sft.models.builder import build_model_chunks, padded_vocab_size

log = logging.getLogger(__name__)


def hf_assets_source(cfg: RunConfig) -> Path | None:
    """Where the HF config/tokenizer of this model live: the HF dir, or a checkpoint's hf_assets/."""
    if cfg.checkpoint.load_format == "hf":
        return Path(cfg.checkpoint.hf_model_path or cfg.checkpoint.load)
    if cfg.checkpoint.load_format == "megatron":
        ckpt_dir = Path(cfg.checkpoint.load_iteration_dir)
        if layout.CheckpointDir(ckpt_dir).hf_assets.is_dir():
            return layout.CheckpointDir(ckpt_dir).hf_assets
    hf = cfg.checkpoint.hf_model_path
    return Path(hf) if hf else None


def tokenizer_source(cfg: RunConfig) -> Path | str:
    """--tokenizer-model, else the tokenizer saved with the model --load names."""
    source = cfg.tokenizer.tokenizer_model or hf_assets_source(cfg)
    if source is None:
        raise UserError(f"--load {cfg.checkpoint.load}: no tokenizer with this model (no hf_assets/); pass "
                        "--tokenizer-model (or --pretrained-model-path) with the Hugging Face directory it came from")
    return source


def load_run_tokenizer(cfg: RunConfig):
    """The run's tokenizer (data/tokenizer.py's one loader)."""
    from megatron_sft.data.tokenizer import load_tokenizer

    return load_tokenizer(str(tokenizer_source(cfg)))


def import_dtype(cfg: RunConfig):
    """--import-dtype, derived as the run's dtype when not given."""
    return dtype_from_name(cfg.checkpoint.import_dtype)


@dataclass
class Loaded:
    iteration: int | None  # of the Megatron checkpoint the weights came from (None: HF, release, random)
    lora: object | None = None  # peft.model.LoraModel of a LoRA run


def load_weights(cfg: RunConfig, chunks: list, resume_dir: Path | None = None) -> Loaded:
    """Fill `chunks` from --load. When resuming from `resume_dir`, a full model's weights are left for the training
    checkpoint (they come with the optimizer state); a LoRA run's frozen base is loaded now, as checkpoints do not
    hold it."""
    resume = resume_dir is not None
    fmt = cfg.checkpoint.load_format
    if cfg.is_lora:  # base weights, then the adapters (unless the resume brings them)
        from megatron_sft.peft.model import build_lora_model

        lora = build_lora_model(cfg, chunks, import_dtype(cfg), load_adapters=not resume)
        return Loaded(lora.iteration, lora)
    if resume:  # the weights come with the training state; a quantized run's quantizers must exist before
        restore_quantization(chunks, resume_dir)
        return Loaded(None)
    if fmt == "hf":
        import_hf_weights(chunks, cfg.checkpoint.hf_model_path or cfg.checkpoint.load, import_dtype(cfg))
        return Loaded(None)
    if fmt == "megatron":
        ckpt_dir, iteration = layout.latest_checkpoint_dir(cfg.checkpoint.load, cfg.checkpoint.ckpt_step, deep=True)
        restore_quantization(chunks, ckpt_dir)
        load_model_weights(ckpt_dir, chunks)
        return Loaded(iteration)
    log.info("no --load given: training starts from random initialisation")
    return Loaded(None)


def load_reference_weights(cfg: RunConfig, chunks: list, source: str) -> None:
    """Fill `chunks` with another model's weights (DPO's --ref-load: a Hugging Face directory or a whole-model
    Megatron checkpoint of the run's architecture, arguments/dpo.py checks which)."""
    if layout.is_megatron_checkpoint(source):
        ckpt_dir, _ = layout.latest_checkpoint_dir(source, None, deep=True)
        load_model_weights(ckpt_dir, chunks)
    else:
        import_hf_weights(chunks, source, import_dtype(cfg))


def restore_quantization(chunks: list, ckpt_dir) -> None:
    """A checkpoint made by quantize (or QAT on one) turns `chunks` into its fake-quantized model; the weights and
    calibrated quantizer values are loaded next, with the rest of the checkpoint."""
    if layout.CheckpointDir(ckpt_dir).is_quantized:
        modelopt_state.restore(chunks, ckpt_dir)
        log.info("%s is quantized (%s): the model runs fake-quantized", ckpt_dir, modelopt_state.describe(ckpt_dir))


def build_and_load(cfg: RunConfig) -> list:
    """Model chunks for this rank's layout, in eval mode, with the weights --load points at."""
    chunks = build_model_chunks(cfg, transformer_config(cfg, skip_init=True), padded_vocab_size(cfg))
    load_weights(cfg, chunks)
    for chunk in chunks:
        chunk.eval()
    return chunks
