"""Checkpoint flags: where weights come from, where they go, and in which dtype conversions run."""

from __future__ import annotations

from argparse import ArgumentParser

DTYPES = ["fp32", "bf16", "fp16"]


def add_checkpoint_args(parser: ArgumentParser) -> None:
    g = parser.add_argument_group("checkpointing")
    g.add_argument(
        "--load",
        help="a Hugging Face model directory, a .gguf file (dequantized once into a cached Hugging Face directory, "
        "see --gguf-cache-dir) or a Megatron checkpoint; its architecture is used",
    )
    g.add_argument(
        "--pretrained-model-path",
        help="Hugging Face directory (or .gguf file) to import weights from when --load holds no checkpoint yet",
    )
    g.add_argument(
        "--gguf-cache-dir",
        metavar="DIR",
        help="where a .gguf --load / --pretrained-model-path is dequantized to, once per file content "
        "(default: $MLM_WORK_DIR/gguf, /tmp/megatron_workspace/gguf without MLM_WORK_DIR)",
    )
    g.add_argument("--save", help="directory for Megatron checkpoints, training.log and metrics.jsonl")
    g.add_argument("--save-interval", type=int, help="save every N iterations (and at the end)")
    g.add_argument(
        "--keep-last",
        type=int,
        metavar="N",
        help="keep only the newest N checkpoints of --save; older ones are deleted once a newer one is saved and "
        "verified (default: keep all)",
    )
    g.add_argument(
        "--save-hf",
        nargs="?",
        const="all",
        choices=["all", "final"],
        help="also write a Hugging Face directory beside each checkpoint, iter_N/hf/ (safetensors, config, "
        "tokenizer; a LoRA run: the PEFT adapter), checked against the model's logits (iter_N/hf/parity.json); "
        "'--save-hf final': for the last checkpoint only",
    )
    g.add_argument(
        "--save-hf-dtype",
        choices=DTYPES,
        help="dtype of the --save-hf weights (default bf16; fp32 keeps an fp32 run's weights exactly)",
    )
    g.add_argument(
        "--ckpt-step",
        type=int,
        metavar="N",
        help="load iteration N of the --load checkpoint instead of the latest one",
    )
    g.add_argument(
        "--finetune", action="store_true", help="load weights only: iteration, optimizer and RNG state start fresh"
    )
    g.add_argument(
        "--no-load-optim",
        action="store_false",
        dest="load_optim",
        help="refused: a resume always restores the optimizer (use --finetune for weights only)",
    )
    g.add_argument(
        "--no-load-rng",
        action="store_false",
        dest="load_rng",
        help="refused: a resume always restores the RNG states (use --finetune for weights only)",
    )
    g.add_argument(
        "--ckpt-format",
        choices=["torch_dist"],
        help="checkpoint format: torch_dist (dist_checkpointing), the only one",
    )
    g.add_argument(
        "--auto-detect-ckpt-format",
        action="store_true",
        help="accepted for compatibility; the format of --load is always detected",
    )
    g.add_argument(
        "--export-te-mcore-model",
        action="store_true",
        help="record that the saved model is meant for the Transformer Engine layer spec",
    )
    g.add_argument(
        "--export-dtype",
        choices=DTYPES,
        help="dtype of exported HF weights (default: --bf16/--fp16, else fp32)",
    )
    g.add_argument(
        "--import-dtype",
        choices=DTYPES,
        help="dtype HF weights are imported in (default: --bf16/--fp16, else fp32)",
    )
