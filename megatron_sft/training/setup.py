"""Model chunks wrapped in Megatron DDP, the optimizer and the LR scheduler, from the run config."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from megatron_sft.config import RunConfig
from megatron_sft.to_mcore import ddp_config, optimizer_config, transformer_config
from megatron_sft.loading import load_weights
from megatron_sft.models.builder import build_model_chunks
from megatron_sft.training.inputs import PackedLayout

log = logging.getLogger(__name__)


@dataclass
class TrainingModel:
    chunks: list  # DDP-wrapped model chunks (one, or one per virtual pipeline stage)
    optimizer: object
    scheduler: object
    config: object  # the TransformerConfig shared by all chunks
    loaded_iteration: int | None  # iteration of the Megatron checkpoint the weights came from
    layout: PackedLayout  # THD stream or explicit mask, and this rank's context-parallel share
    lora: object | None = None  # peft.model.LoraModel of a LoRA run: checkpoints hold its adapters only
    lm_head_chunk_size: int = 0  # supervised tokens per output-layer chunk in the loss (0: full logits)


def scheduler_steps(cfg: RunConfig) -> dict:
    """Warmup / decay lengths in samples, as Megatron-LM counts them (1 iteration = GBS samples)."""
    gbs = cfg.training.global_batch_size
    if cfg.training.train_samples is not None:
        decay = cfg.training.lr_decay_samples or cfg.training.train_samples
        warmup = cfg.training.lr_warmup_samples
        wsd = cfg.training.lr_wsd_decay_samples
    else:
        decay = (cfg.training.lr_decay_iters or cfg.training.train_iters) * gbs
        warmup = cfg.training.lr_warmup_iters * gbs
        wsd = cfg.training.lr_wsd_decay_iters * gbs if cfg.training.lr_wsd_decay_iters else None
    if cfg.training.lr_warmup_fraction is not None:
        warmup = int(cfg.training.lr_warmup_fraction * decay)
    return {"lr_warmup_steps": warmup, "lr_decay_steps": decay, "wsd_decay_steps": wsd}


def build_scheduler(cfg: RunConfig, optimizer):
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    steps = scheduler_steps(cfg)
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if steps["lr_warmup_steps"] else cfg.training.lr,
        max_lr=cfg.training.lr,
        min_lr=cfg.training.min_lr,
        lr_warmup_steps=steps["lr_warmup_steps"],
        lr_decay_steps=steps["lr_decay_steps"],
        lr_decay_style=cfg.training.lr_decay_style,
        start_wd=cfg.training.weight_decay,
        end_wd=cfg.training.weight_decay,
        wd_incr_steps=steps["lr_decay_steps"],
        wd_incr_style="constant",
        wsd_decay_steps=steps["wsd_decay_steps"],
        lr_wsd_decay_style=cfg.training.lr_wsd_decay_style,
    )


def _wrap_ddp(cfg: RunConfig, config, chunks: list) -> list:
    from megatron.core.distributed import DistributedDataParallel

    ddp_cfg = ddp_config(cfg)
    # Only the first chunk buckets its grads: Megatron-LM's choice for interleaved pipelines.
    return [DistributedDataParallel(config=config, ddp_config=ddp_cfg, module=c, disable_bucketing=i > 0)
            for i, c in enumerate(chunks)]


def _hook_schedules(config, ddp_chunks: list, optimizer) -> None:
    """What Megatron's schedules call back into: grad sync control, grad finalisation, loss scale."""
    from megatron.core.distributed import finalize_model_grads

    config.no_sync_func = [c.no_sync for c in ddp_chunks] if len(ddp_chunks) > 1 else ddp_chunks[0].no_sync
    config.finalize_model_grads_func = finalize_model_grads
    config.grad_scale_func = optimizer.scale_loss


def build_training_model(cfg: RunConfig, resume_dir=None) -> TrainingModel:
    """Weights are loaded before the optimizer exists, so its fp32 main params copy them.

    On a full resume (from `resume_dir`) the weights come later, together with the optimizer state.
    """
    from megatron.core.optimizer import get_megatron_optimizer

    config = transformer_config(cfg)
    chunks = build_model_chunks(cfg, config, cfg.model.padded_vocab_size)
    loaded = load_weights(cfg, chunks, resume_dir)
    ddp_chunks = _wrap_ddp(cfg, config, chunks)
    optimizer = get_megatron_optimizer(optimizer_config(cfg), ddp_chunks)
    _hook_schedules(config, ddp_chunks, optimizer)
    scheduler = build_scheduler(cfg, optimizer)
    n_params = sum(p.numel() for c in chunks for p in c.parameters())
    log.info("model built: %.2fM parameters on this rank", n_params / 1e6)
    return TrainingModel(ddp_chunks, optimizer, scheduler, config, loaded.iteration, PackedLayout.from_config(cfg),
                         loaded.lora, cfg.training.lm_head_chunk_size)
