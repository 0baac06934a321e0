"""Model chunks wrapped in Megatron DDP, the optimizer and the LR scheduler, from resolved args."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from megatron_sft.checkpointing.loading import import_dtype, load_weights
from megatron_sft.config import ddp_config, optimizer_config, transformer_config
from megatron_sft.models.builder import build_model_chunks, padded_vocab_size
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


def unwrap(chunk):
    """The GPTModel inside a DDP / Float16Module wrapper."""
    while hasattr(chunk, "module"):
        chunk = chunk.module
    return chunk


def scheduler_steps(args) -> dict:
    """Warmup / decay lengths in samples, as Megatron-LM counts them (1 iteration = GBS samples)."""
    gbs = args.global_batch_size
    if args.train_samples is not None:
        decay = args.lr_decay_samples or args.train_samples
        warmup = args.lr_warmup_samples
        wsd = args.lr_wsd_decay_samples
    else:
        decay = (args.lr_decay_iters or args.train_iters) * gbs
        warmup = args.lr_warmup_iters * gbs
        wsd = args.lr_wsd_decay_iters * gbs if args.lr_wsd_decay_iters else None
    if args.lr_warmup_fraction is not None:
        warmup = int(args.lr_warmup_fraction * decay)
    return {"lr_warmup_steps": warmup, "lr_decay_steps": decay, "wsd_decay_steps": wsd}


def build_scheduler(args, optimizer):
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    steps = scheduler_steps(args)
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if steps["lr_warmup_steps"] else args.lr,
        max_lr=args.lr,
        min_lr=args.min_lr,
        lr_warmup_steps=steps["lr_warmup_steps"],
        lr_decay_steps=steps["lr_decay_steps"],
        lr_decay_style=args.lr_decay_style,
        start_wd=args.weight_decay,
        end_wd=args.weight_decay,
        wd_incr_steps=steps["lr_decay_steps"],
        wd_incr_style="constant",
        wsd_decay_steps=steps["wsd_decay_steps"],
        lr_wsd_decay_style=args.lr_wsd_decay_style,
    )


def _wrap_ddp(args, config, chunks: list) -> list:
    from megatron.core.distributed import DistributedDataParallel

    ddp_cfg = ddp_config(args)
    # Only the first chunk buckets its grads: Megatron-LM's choice for interleaved pipelines.
    return [DistributedDataParallel(config=config, ddp_config=ddp_cfg, module=c, disable_bucketing=i > 0)
            for i, c in enumerate(chunks)]


def _hook_schedules(config, ddp_chunks: list, optimizer) -> None:
    """What Megatron's schedules call back into: grad sync control, grad finalisation, loss scale."""
    from megatron.core.distributed import finalize_model_grads

    config.no_sync_func = [c.no_sync for c in ddp_chunks] if len(ddp_chunks) > 1 else ddp_chunks[0].no_sync
    config.finalize_model_grads_func = finalize_model_grads
    config.grad_scale_func = optimizer.scale_loss


def build_training_model(args, tokenizer_vocab: int, resume: bool) -> TrainingModel:
    """Weights are loaded before the optimizer exists, so its fp32 main params copy them.

    On a full resume the weights come later, together with the optimizer state.
    """
    from megatron.core.optimizer import get_megatron_optimizer

    config = transformer_config(args)
    # Recorded in run_args.json, so a model trained from scratch reloads with the same vocabulary.
    args.padded_vocab_size = padded_vocab_size(args, tokenizer_vocab)
    chunks = build_model_chunks(args, config, args.padded_vocab_size)
    lora = None
    if args.peft == "lora":  # the frozen base is loaded now even on a resume: checkpoints do not hold it
        from megatron_sft.peft.model import build_lora_model

        lora = build_lora_model(args, chunks, import_dtype(args), load_adapters=not resume)
        loaded_iteration = lora.iteration
    else:
        loaded_iteration = None if resume else load_weights(args, chunks)
    ddp_chunks = _wrap_ddp(args, config, chunks)
    optimizer = get_megatron_optimizer(optimizer_config(args), ddp_chunks)
    _hook_schedules(config, ddp_chunks, optimizer)
    scheduler = build_scheduler(args, optimizer)
    n_params = sum(p.numel() for c in chunks for p in c.parameters())
    log.info("model built: %.2fM parameters on this rank", n_params / 1e6)
    return TrainingModel(ddp_chunks, optimizer, scheduler, config, loaded_iteration, PackedLayout.from_args(args),
                         lora)
