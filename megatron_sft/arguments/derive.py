"""Every value derived from the resolved flags, computed here and nowhere else: the checks in validate.py
only read them. Runs after the sizes are known to be positive; a value that cannot be derived (a world size
the layout does not divide) stays None, and validate.py says why."""

from __future__ import annotations

from argparse import Namespace

from megatron_sft.arguments.resolve import derive_architecture
from megatron_sft.config import DEFAULT_SPLIT


def derive_values(args: Namespace, options: dict[str, str]) -> None:
    derive_architecture(args, options)
    _layout(args)
    _batch(args)
    _schedule(args)
    args.params_dtype = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    if args.hybrid_override_pattern and args.mamba_num_heads is None and args.hidden_size:
        args.mamba_num_heads = 2 * args.hidden_size // args.mamba_head_dim  # Megatron-Core's default (expand 2)
    if args.fp16 and args.lm_head_chunk_size:
        # d(loss)/d(logits) is formed before the loss scale is known; in fp16 its small entries would underflow.
        args.lm_head_chunk_size = 0
        args.notices.append("--lm-head-chunk-size: full logits with --fp16 (the chunked head needs bf16 or fp32)")
    args.export_dtype = args.export_dtype or args.params_dtype
    args.import_dtype = args.import_dtype or args.params_dtype
    args.padded_vocab_size = args.checkpoint_vocab_size  # None: the model code pads the tokenizer's vocabulary
    per_split = args.train_data_path or args.valid_data_path or args.test_data_path
    if args.split is None and not per_split:
        args.split = DEFAULT_SPLIT
    _collect_notices(args)


def _layout(args: Namespace) -> None:
    tp, pp, cp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.context_parallel_size
    model_parallel = tp * pp * cp
    args.data_parallel_size = args.world_size // model_parallel if args.world_size % model_parallel == 0 else None
    if args.expert_tensor_parallel_size is None:
        args.expert_tensor_parallel_size = tp  # Megatron-LM's default
    if args.sequence_parallel and tp == 1:
        args.sequence_parallel = False  # as Megatron-LM does; said once instead of silently
        args.notices.append("--sequence-parallel has no effect with --tensor-model-parallel-size 1; turned off")
    per_stage, layers = args.num_layers_per_virtual_pipeline_stage, args.num_layers
    args.virtual_pipeline_model_parallel_size = None
    if per_stage and pp > 1 and layers and per_stage >= 1 and layers % (pp * per_stage) == 0:
        args.virtual_pipeline_model_parallel_size = layers // (pp * per_stage)


def _batch(args: Namespace) -> None:
    dp, mbs = args.data_parallel_size, args.micro_batch_size
    args.num_microbatches = None
    if dp is None:
        return
    if args.global_batch_size is None:
        args.global_batch_size = mbs * dp
    if args.global_batch_size >= 1 and args.global_batch_size % (mbs * dp) == 0:
        args.num_microbatches = args.global_batch_size // (mbs * dp)


def _schedule(args: Namespace) -> None:
    """The LR decays over the whole run unless told otherwise (--train-epochs: once the data is prepared)."""
    if args.train_iters is not None and args.train_samples is None:  # both given: validate.py says so
        args.lr_decay_iters = args.lr_decay_iters or args.train_iters
    if args.train_samples is not None and args.train_iters is None:
        args.lr_decay_samples = args.lr_decay_samples or args.train_samples


_NO_EFFECT = {  # accepted Megatron-LM flags whose behaviour is always on here: said once, never silent
    "auto_detect_ckpt_format": "--auto-detect-ckpt-format: the format of --load is always detected",
    "export_te_mcore_model": "--export-te-mcore-model: dist_checkpointing checkpoints load into either layer spec",
}


def _collect_notices(args: Namespace) -> None:
    for dest, notice in _NO_EFFECT.items():
        if getattr(args, dest):
            args.notices.append(notice)
    if not args.masked_softmax_fusion:
        args.notices.append(
            "--no-masked-softmax-fusion: masked-softmax fusion is always off (samples are kept apart "
            "by the packed attention or an explicit mask)"
        )
    if args.use_mcore_models:
        args.notices.append("--use-mcore-models: Megatron-Core models are always used")
    if args.reset_position_ids or args.reset_attention_mask:
        args.notices.append(
            "--reset-position-ids/--reset-attention-mask: packing always resets positions and isolates samples"
        )
