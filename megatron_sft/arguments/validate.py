"""Every check on the resolved flags, in one pass. Problems are collected, never raised one by one, so a user
fixes a command line in one go; each names the flags, their values and a value that works. The values the
checks read are derived first, in derive.py; nothing here sets a value.
"""

from __future__ import annotations

from argparse import Namespace

from megatron_sft.arguments.inputs import check_inputs, is_training
from megatron_sft.arguments.peft import check_lora_values

_REQUIRED_ARCH = ("num_layers", "hidden_size", "num_attention_heads")
_POSITIVE = (
    "tensor_model_parallel_size",
    "pipeline_model_parallel_size",
    "context_parallel_size",
    "expert_model_parallel_size",
    "micro_batch_size",
)


def check_sizes(args: Namespace, options: dict[str, str]) -> list[str]:
    """The sizes every derived value is divided by."""
    return [f"{options[key]} {getattr(args, key)} must be at least 1" for key in _POSITIVE if getattr(args, key) < 1]


def validate_args(args: Namespace, options: dict[str, str]) -> list[str]:
    """Every problem of the resolved and derived values; reads only (the notices were collected in derive.py)."""
    problems = []
    missing = [key for key in _REQUIRED_ARCH if getattr(args, key) is None]
    for key in missing:
        problems.append(f"{options[key]} is required: no --load / --pretrained-model-path gives the architecture")
    _check_world(args, problems)
    if not missing:
        _check_model_split(args, options, problems)
        _check_experts(args, options, problems)
        _check_hybrid(args, options, problems)
    _check_vocab(args, options, problems)
    _check_batch(args, problems)
    _check_schedule(args, problems)
    _check_precision_and_misc(args, problems)
    _check_attention(args, problems)
    _check_data(args, problems)
    check_lora_values(args, problems)
    check_inputs(args, problems)
    _refuse_unsupported(args, problems)
    return problems


def divisors_text(n: int, limit: int = 64) -> str:
    """'1, 2, 4 or 8': the divisors of n up to limit, as a suggestion."""
    found = [str(d) for d in range(1, min(n, limit) + 1) if n % d == 0]
    return found[0] if len(found) == 1 else f"{', '.join(found[:-1])} or {found[-1]}"


def _origin(args: Namespace, key: str) -> str:
    source = args.arch_sources.get(key)
    return "" if source in (None, "flag", "default") else f" (from {source})"


def _check_world(args: Namespace, problems: list[str]) -> None:
    tp, pp, cp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.context_parallel_size
    world, model_parallel = args.world_size, tp * pp * cp
    if args.data_parallel_size is None:
        problems.append(
            f"world size {world} is not divisible by tensor-model-parallel-size ({tp}) × pipeline-model-parallel-size "
            f"({pp}) × context-parallel-size ({cp}) = {model_parallel}; launch {model_parallel}, "
            f"{2 * model_parallel}, {3 * model_parallel}... processes"
        )


def _check_model_split(args: Namespace, options: dict[str, str], problems: list[str]) -> None:
    """Heads, FFN and layers must split evenly over TP and PP (and virtual pipeline stages)."""
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    tp_flag = options["tensor_model_parallel_size"]
    split_by_tp = ["num_attention_heads", "ffn_hidden_size"] + (
        ["num_query_groups"] if args.group_query_attention else []
    )
    for key in split_by_tp:
        value = getattr(args, key)
        if value % tp:
            problems.append(
                f"{tp_flag} {tp} must divide {options[key]} {value}{_origin(args, key)}; use {divisors_text(value)}"
            )
    if args.arch_sources["kv_channels"] == "default" and args.hidden_size % args.num_attention_heads:
        problems.append(
            f"--hidden-size {args.hidden_size} is not divisible by --num-attention-heads "
            f"{args.num_attention_heads}; give --kv-channels"
        )
    layers, pp_flag = args.num_layers, options["pipeline_model_parallel_size"]
    if layers % pp:
        problems.append(
            f"{pp_flag} {pp} must divide {options['num_layers']} {layers}{_origin(args, 'num_layers')}; "
            f"use {divisors_text(layers)}"
        )
    per_stage = args.num_layers_per_virtual_pipeline_stage
    if per_stage is not None:
        if pp == 1:
            problems.append("--num-layers-per-virtual-pipeline-stage needs --pipeline-model-parallel-size > 1")
        elif per_stage < 1 or layers % (pp * per_stage):
            problems.append(
                f"--num-layers {layers} is not divisible by {pp_flag} {pp} × "
                f"--num-layers-per-virtual-pipeline-stage {per_stage} = {pp * per_stage}"
            )


def _check_hybrid(args: Namespace, options: dict[str, str], problems: list[str]) -> None:
    """The layer pattern, and the Mamba heads and groups that TP (and CP) split."""
    pattern = args.hybrid_override_pattern
    if not pattern:
        if args.is_hybrid_model:
            problems.append("--is-hybrid-model needs --hybrid-override-pattern (one symbol per layer: M Mamba-2, "
                            "* attention, - MLP, E MoE); ratio-based layer allocation is not supported")
        return
    bad = sorted(set(pattern) - set("M*-E"))
    if bad:
        problems.append(f"--hybrid-override-pattern {pattern!r}{_origin(args, 'hybrid_override_pattern')} has "
                        f"symbols {bad}; use M (Mamba-2), * (attention), - (MLP), E (MoE)")
    if len(pattern) != args.num_layers:
        problems.append(f"--hybrid-override-pattern {pattern!r} has {len(pattern)} layers; {options['num_layers']} "
                        f"is {args.num_layers}")
    if "E" in pattern and not args.num_experts:
        problems.append(f"--hybrid-override-pattern {pattern!r} has MoE layers (E); give --num-experts")
    tp, cp = args.tensor_model_parallel_size, args.context_parallel_size
    for key, split, what in (("mamba_num_heads", tp * cp, f"TP x CP = {tp * cp}"), ("mamba_num_groups", tp, f"TP {tp}")):
        value = getattr(args, key)
        if "M" in pattern and value and value % split:
            problems.append(f"{what} must divide {options[key]} {value}{_origin(args, key)} (each rank holds whole "
                            f"Mamba heads and groups); use {divisors_text(value)}")
    groups = (args.mamba_num_groups or 0) // tp
    if "M" in pattern and cp > 1 and groups and groups % cp and cp % groups:
        problems.append(f"{options['context_parallel_size']} {cp} and the {groups} Mamba groups per tensor-parallel "
                        "rank must divide one another")
    if "M" in pattern and args.mamba_num_heads and args.mamba_num_groups and \
            args.mamba_num_heads % args.mamba_num_groups:
        problems.append(f"{options['mamba_num_groups']} {args.mamba_num_groups} must divide "
                        f"{options['mamba_num_heads']} {args.mamba_num_heads}")
    if args.virtual_pipeline_model_parallel_size:
        problems.append("--num-layers-per-virtual-pipeline-stage: Megatron-Core's MambaModel has no virtual "
                        "pipeline stages; leave it out")
    if args.attention_backend == "local":
        problems.append("--attention-backend local passes packed samples as an attention mask, which Mamba layers "
                        "ignore (one sample's state would flow into the next); use --attention-backend auto")


def _check_experts(args: Namespace, options: dict[str, str], problems: list[str]) -> None:
    """Expert layout: EP × ETP × expert-DP covers the same ranks as TP × CP × DP (world / PP). Megatron builds
    the expert groups for dense models too, so the fit is checked for every model."""
    ep, pp, world = args.expert_model_parallel_size, args.pipeline_model_parallel_size, args.world_size
    etp = args.expert_tensor_parallel_size
    ep_flag, experts = options["expert_model_parallel_size"], args.num_experts
    if not experts and ep > 1:
        problems.append(f"{ep_flag} {ep} needs a mixture-of-experts model (--num-experts); this one is dense")
    elif experts and experts % ep:
        problems.append(
            f"{ep_flag} {ep} must divide --num-experts {experts}{_origin(args, 'num_experts')}; "
            f"use {divisors_text(experts)}"
        )
    if experts and args.tensor_model_parallel_size > 1 and not args.sequence_parallel and is_training(args):
        problems.append(f"training a mixture-of-experts model at --tensor-model-parallel-size "
                        f"{args.tensor_model_parallel_size} needs --sequence-parallel (Megatron-Core refuses it "
                        "without)")
    if experts and ep == 1 and etp != args.tensor_model_parallel_size and is_training(args):
        problems.append(f"--expert-tensor-parallel-size {etp} differs from --tensor-model-parallel-size "
                        f"{args.tensor_model_parallel_size} at {ep_flag} 1: Megatron-Core then reduces the expert "
                        "gradients like dense ones, without the tensor-parallel ranks that hold the same experts, "
                        "and their copies drift apart; use expert parallelism > 1 or the same size for both")
    if experts and args.moe_router_topk > experts:
        problems.append(f"--moe-router-topk {args.moe_router_topk} is more than --num-experts {experts}")
    if etp < 1:
        problems.append(f"--expert-tensor-parallel-size {etp} must be at least 1")
    if etp < 1 or args.data_parallel_size is None or (not experts and ep > 1):  # already reported
        return
    ranks = world // pp
    if ranks % (ep * etp):
        problems.append(
            f"{ep_flag} {ep} × --expert-tensor-parallel-size {etp} = {ep * etp} must divide world size "
            f"{world} / --pipeline-model-parallel-size {pp} = {ranks}; use EP × ETP in "
            f"{divisors_text(ranks)}"
        )


def _check_vocab(args: Namespace, options: dict[str, str], problems: list[str]) -> None:
    """A checkpoint's vocab_size is the padded vocabulary; padding only ever applies to fresh models."""
    vocab, tp = args.checkpoint_vocab_size, args.tensor_model_parallel_size
    if not vocab:
        return
    multiple, where = args.make_vocab_size_divisible_by, args.checkpoint_vocab_file
    if args.arch_sources["make_vocab_size_divisible_by"] == "flag" and vocab % (multiple * tp):
        working = [str(t) for t in range(1, 65) if vocab % (multiple * t) == 0]
        fix = f"use TP {', '.join(working)} or omit the flag" if working else "omit the flag"
        problems.append(
            f"{options['make_vocab_size_divisible_by']} {multiple} × TP {tp} = {multiple * tp} does not "
            f"divide vocab_size {vocab} of {where}; {fix}"
        )
    elif vocab % tp:
        problems.append(
            f"vocab_size {vocab} in {where} is not divisible by {options['tensor_model_parallel_size']} "
            f"{tp}; use {divisors_text(vocab)}"
        )


def _check_batch(args: Namespace, problems: list[str]) -> None:
    mbs, dp, gbs = args.micro_batch_size, args.data_parallel_size, args.global_batch_size
    if dp is None:  # world size already reported
        return
    unit = mbs * dp
    if args.num_microbatches is None:
        below = max(unit, gbs // unit * unit)
        problems.append(
            f"--global-batch-size {gbs} is not divisible by --micro-batch-size {mbs} × data-parallel "
            f"size {dp} = {unit}; use {below} or {below + unit}"
        )


def _check_schedule(args: Namespace, problems: list[str]) -> None:
    """Run length and LR schedule count either iterations or samples, like Megatron-LM."""
    given = [
        f
        for f, v in (
            ("--train-iters", args.train_iters),
            ("--train-samples", args.train_samples),
            ("--train-epochs", args.train_epochs),
        )
        if v is not None
    ]
    if len(given) > 1:
        problems.append(f"give --train-iters or --train-samples or --train-epochs, not {' and '.join(given)}")
    if args.override_opt_param_scheduler and args.use_checkpoint_opt_param_scheduler:
        problems.append("give --override-opt_param-scheduler (the schedule of these flags) or "
                        "--use-checkpoint-opt_param-scheduler (the checkpoint's), not both")
    if args.train_epochs is not None and args.train_epochs < 1:
        problems.append(f"--train-epochs {args.train_epochs} must be at least 1")
    if args.train_epochs is not None:  # sized in iterations once the data is prepared
        for flag, value in (
            ("--lr-decay-samples", args.lr_decay_samples),
            ("--lr-wsd-decay-samples", args.lr_wsd_decay_samples),
            ("--lr-warmup-samples", args.lr_warmup_samples or None),
        ):
            if value is not None:
                problems.append(
                    f"{flag} counts samples; with --train-epochs use {flag.replace('samples', 'iters')} "
                    "or --lr-warmup-fraction"
                )
    by_samples = {
        "--lr-decay-samples": args.lr_decay_samples,
        "--lr-wsd-decay-samples": args.lr_wsd_decay_samples,
        "--lr-warmup-samples": args.lr_warmup_samples or None,
    }
    by_iters = {
        "--lr-decay-iters": args.lr_decay_iters,
        "--lr-wsd-decay-iters": args.lr_wsd_decay_iters,
        "--lr-warmup-iters": args.lr_warmup_iters or None,
    }
    if args.train_iters is not None:
        for flag, value in by_samples.items():
            if value is not None:
                problems.append(f"{flag} counts samples; with --train-iters use {flag.replace('samples', 'iters')}")
    if args.train_samples is not None:
        for flag, value in by_iters.items():
            if value is not None:
                problems.append(
                    f"{flag} counts iterations; with --train-samples use {flag.replace('iters', 'samples')}"
                )
    if args.lr_warmup_fraction is not None and (args.lr_warmup_iters or args.lr_warmup_samples):
        problems.append("give --lr-warmup-fraction or --lr-warmup-iters/--lr-warmup-samples, not both")
    _check_warmup_shorter_than_decay(args, problems)
    if args.lr_decay_style == "WSD" and args.lr_wsd_decay_iters is None and args.lr_wsd_decay_samples is None:
        problems.append("--lr-decay-style WSD needs --lr-wsd-decay-iters (or --lr-wsd-decay-samples)")
    training = is_training(args)
    if training and args.lr is None:
        problems.append("--lr is required for training (e.g. --lr 1e-5)")
    if training and args.seq_length is None:
        problems.append("--seq-length is required for training (e.g. --seq-length 4096)")


def _check_warmup_shorter_than_decay(args: Namespace, problems: list[str]) -> None:
    """Megatron's scheduler asserts warmup < decay; say which flags and a value that works."""
    if args.lr_warmup_fraction is not None and not 0 <= args.lr_warmup_fraction < 1:
        problems.append(f"--lr-warmup-fraction {args.lr_warmup_fraction} must be in [0, 1), e.g. 0.05")
    for unit in ("iters", "samples"):
        warmup, decay = getattr(args, f"lr_warmup_{unit}"), getattr(args, f"lr_decay_{unit}")
        if warmup and decay and warmup >= decay:
            problems.append(
                f"--lr-warmup-{unit} {warmup} must be shorter than the decay ({decay} {unit}, "
                f"--lr-decay-{unit} or --train-{unit}); use e.g. --lr-warmup-{unit} {max(decay // 10, 0)}"
            )


def _check_precision_and_misc(args: Namespace, problems: list[str]) -> None:
    if args.fp16 and args.bf16:
        problems.append("give --fp16 or --bf16, not both")
    if args.truncate_long_samples and args.drop_long_samples:
        problems.append("give --truncate-long-samples (the default) or --drop-long-samples, not both")
    if args.recompute_granularity == "full" and (args.recompute_method is None or args.recompute_num_layers is None):
        problems.append(
            "--recompute-granularity full needs --recompute-method (uniform or block) and --recompute-num-layers"
        )
    if args.recompute_granularity != "full" and args.recompute_method is not None:
        problems.append("--recompute-method applies only with --recompute-granularity full")
    if args.lm_head_chunk_size < 0:
        problems.append(f"--lm-head-chunk-size {args.lm_head_chunk_size} must be 0 (full logits) or more")
    if args.keep_last is not None and args.keep_last < 1:
        problems.append(f"--keep-last {args.keep_last} must be at least 1 (leave it out to keep every checkpoint)")
    if args.save_hf and not args.save:
        problems.append("--save-hf writes iter_N/hf/ beside each checkpoint: give --save DIR too")
    if args.ckpt_step is not None and args.load_format != "megatron":
        problems.append(
            f"--ckpt-step {args.ckpt_step} selects an iteration of a Megatron checkpoint; --load "
            f"{args.load} is not one"
        )
    seq, positions = args.seq_length, args.max_position_embeddings
    if args.position_embedding_type == "learned_absolute" and seq and positions and seq > positions:
        problems.append(f"--seq-length {seq} is longer than --max-position-embeddings {positions}")


def _check_data(args: Namespace, problems: list[str]) -> None:
    """The data pipeline's own checks (DataConfig.problems in config.py, shared with the data tools), made now: the data named
    (for a run that trains), the two ways of naming it not mixed, sample and sequence lengths, CP padding."""
    from megatron_sft.config import DataConfig

    data = DataConfig.from_args(args, validate=False)
    problems.extend(data.problems(require_data=is_training(args)))


def _check_attention(args: Namespace, problems: list[str]) -> None:
    """--attention-backend, --cp-comm-type and the token counts that THD, CP and SP must split."""
    backend, cp, tp = args.attention_backend, args.context_parallel_size, args.tensor_model_parallel_size
    if backend in ("flash", "fused", "unfused"):
        problems.append(
            f"--attention-backend {backend} names a Transformer Engine kernel, and training on "
            "Transformer Engine is not available yet; use --attention-backend auto (packed SDPA, the "
            "default)"
        )
    if backend == "local" and cp > 1:
        problems.append(
            f"--attention-backend local (Megatron's DotProductAttention) has no context parallelism; "
            f"use --attention-backend auto with --context-parallel-size {cp}"
        )
    comm = args.cp_comm_type
    if comm is not None and cp == 1:
        args.notices.append(f"--cp-comm-type {' '.join(comm)} has no effect with --context-parallel-size 1")
    elif comm is not None and any(c != "allgather" for c in comm):
        problems.append(
            f"--cp-comm-type {' '.join(comm)}: the packed attention all-gathers K/V over the context-"
            "parallel group; use --cp-comm-type allgather (or leave it out)"
        )
    seq, mbs = args.seq_length, args.micro_batch_size
    if seq and args.sequence_parallel:
        tokens = seq * (mbs if backend == "auto" else 1) // cp  # per CP rank, split again over TP under SP
        if tokens % tp:
            problems.append(
                f"--sequence-parallel splits the {tokens} tokens per context-parallel rank over "
                f"--tensor-model-parallel-size {tp}; use a --seq-length that is a multiple of "
                f"{tp * cp * (2 if cp > 1 else 1)}"
            )


def _refuse_unsupported(args: Namespace, problems: list[str]) -> None:
    """Megatron-LM flags this project cannot honour: one line each, with what to do instead."""
    if not args.load_optim:
        problems.append(
            "--no-load-optim: a resume always restores the optimizer and its schedule; to start a new "
            "run from a checkpoint's weights use --finetune"
        )
    if not args.load_rng:
        problems.append(
            "--no-load-rng: a resume always restores the RNG states (they are what makes it exact); to "
            "start a new run from a checkpoint's weights use --finetune"
        )
