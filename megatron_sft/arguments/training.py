"""Training flags: batch arithmetic, length of the run, optimizer, LR schedule, precision, logging."""

from __future__ import annotations

from argparse import ArgumentParser

from megatron_sft.errors import UserError


def add_training_args(parser: ArgumentParser) -> None:
    g = parser.add_argument_group("training")
    g.add_argument(
        "--micro-batch-size", type=int, help="packed sequences per forward/backward pass on each data-parallel rank"
    )
    g.add_argument("--global-batch-size", type=int, help="default micro-batch size x data-parallel size")
    g.add_argument("--train-iters", type=int, help="run length in optimizer steps")
    g.add_argument(
        "--train-samples", type=int, help="run length in packed sequences (iterations = samples / global batch)"
    )
    g.add_argument(
        "--train-epochs",
        type=int,
        help="passes over the training split (instead of --train-iters/--train-samples); iterations and the LR "
        "schedule are sized from the prepared data",
    )
    g.add_argument("--exit-interval", type=int, help="stop (and save) after an iteration divisible by this")
    g.add_argument(
        "--override-opt_param-scheduler",
        action="store_true",
        help="on resume: the learning-rate and weight-decay schedule from these flags, not from the checkpoint "
        "(also allows resuming at another --global-batch-size)",
    )
    g.add_argument(
        "--use-checkpoint-opt_param-scheduler",
        action="store_true",
        help="on resume: keep the checkpoint's learning-rate and weight-decay schedule even where these flags differ",
    )
    g.add_argument(
        "--exit-duration-in-mins", type=int, help="stop (and save) once the run has taken this many minutes"
    )
    g.add_argument("--seed", type=int, help="random seed: initialisation, dropout, data order and PATH:N subsets")
    g.add_argument(
        "--fp16",
        action="store_true",
        help="fp16 weights and activations with loss scaling (fp32 main parameters in the optimizer)",
    )
    g.add_argument(
        "--bf16", action="store_true", help="bf16 weights and activations (fp32 main parameters in the optimizer)"
    )
    g.add_argument(
        "--no-gradient-accumulation-fusion",
        action="store_false",
        dest="gradient_accumulation_fusion",
        help="accumulate weight gradients without the fused kernel (always off without Apex)",
    )
    g.add_argument(
        "--no-check-for-nan-in-loss-and-grad",
        action="store_false",
        dest="check_for_nan_in_loss_and_grad",
        help="train on through a NaN/Inf loss or gradient norm instead of stopping",
    )
    g.add_argument(
        "--lm-head-chunk-size",
        type=int,
        metavar="N",
        help="training and validation loss: the output layer and cross-entropy run only on supervised tokens, N at "
        "a time, so at most N x vocab/TP logits exist (0: full logits of every token, Megatron's own path)",
    )
    g.add_argument(
        "--neftune-noise-alpha",
        type=float,
        metavar="A",
        help="NEFTune: uniform noise of scale A / sqrt(L x hidden) added to the input embeddings in training, L each "
        "conversation's own length inside its pack (transformers' formula; TRL's neftune_noise_alpha; 5 is usual)",
    )
    g.add_argument(
        "--recompute-granularity",
        choices=["full", "selective"],
        help="activation recomputation: full layers, or selective (attention core only)",
    )
    g.add_argument(
        "--recompute-method",
        choices=["uniform", "block"],
        help="with full recomputation: uniform (every --recompute-num-layers layers) or block (the first N layers of "
        "each stage)",
    )
    g.add_argument(
        "--recompute-num-layers",
        type=int,
        help="layers per recomputed chunk (uniform) or recomputed per stage (block)",
    )
    _add_optimizer_args(parser)
    _add_schedule_args(parser)
    _add_logging_args(parser)


def _add_optimizer_args(parser: ArgumentParser) -> None:
    g = parser.add_argument_group("optimizer (Adam)")
    g.add_argument("--lr", type=float, help="peak learning rate")
    g.add_argument("--min-lr", type=float, help="learning rate at the end of the decay")
    g.add_argument("--clip-grad", type=float, help="clip the global gradient norm to this (0: off)")
    g.add_argument("--weight-decay", type=float, help="decoupled (AdamW) weight decay")
    g.add_argument("--adam-beta1", type=float, help="Adam's first-moment decay")
    g.add_argument("--adam-beta2", type=float, help="Adam's second-moment decay")
    g.add_argument("--adam-eps", type=float, help="Adam's epsilon")


def _add_schedule_args(parser: ArgumentParser) -> None:
    g = parser.add_argument_group("learning-rate schedule (iteration- or sample-based, like the run length)")
    g.add_argument(
        "--lr-decay-style",
        choices=["constant", "linear", "cosine", "inverse-square-root", "WSD"],
        help="learning-rate decay after the warmup",
    )
    g.add_argument("--lr-decay-iters", type=int, help="default --train-iters")
    g.add_argument("--lr-decay-samples", type=int, help="default --train-samples")
    g.add_argument(
        "--lr-warmup-fraction",
        type=float,
        help="warmup as a share of the decay length (instead of --lr-warmup-iters/-samples)",
    )
    g.add_argument("--lr-warmup-iters", type=int, help="warmup length in iterations")
    g.add_argument("--lr-warmup-samples", type=int, help="warmup length in samples (with --train-samples)")
    g.add_argument(
        "--lr-wsd-decay-style",
        choices=["exponential", "linear", "cosine", "minus_sqrt"],
        help="shape of the final decay of --lr-decay-style WSD",
    )
    g.add_argument(
        "--lr-wsd-decay-iters", type=int, help="length of the final decay of --lr-decay-style WSD, in iterations"
    )
    g.add_argument(
        "--lr-wsd-decay-samples", type=int, help="length of the final decay of --lr-decay-style WSD, in samples"
    )


def _add_logging_args(parser: ArgumentParser) -> None:
    g = parser.add_argument_group("evaluation and logging")
    g.add_argument(
        "--eval-iters",
        type=int,
        help="validation iterations each time (at most one pass over the validation split; 0: no validation)",
    )
    g.add_argument("--eval-interval", type=int, help="validate every N iterations (and at the end)")
    g.add_argument("--log-interval", type=int, help="print and record the figures every N iterations")
    g.add_argument("--tensorboard-dir", help="write TensorBoard scalars here (pip install .[loggers])")
    g.add_argument("--wandb-project", help="log to this Weights & Biases project (wandb installed and logged in)")
    g.add_argument("--wandb-exp-name", help="the Weights & Biases run name")


def check_neftune(cfg) -> None:
    alpha = cfg.training.neftune_noise_alpha
    if alpha is not None and alpha <= 0:
        raise UserError(f"--neftune-noise-alpha {alpha} must be positive (leave it out for no noise)")


def check_run_length(cfg) -> None:
    """Training needs a run length; generation shares the parser, where it is optional (validate.py requires --lr
    and --seq-length once a run length makes the command a training one)."""
    t = cfg.training
    if t.train_iters is None and t.train_samples is None and t.train_epochs is None:
        raise UserError("give the run length: --train-iters, --train-samples or --train-epochs")
