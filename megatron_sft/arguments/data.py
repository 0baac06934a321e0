"""Data and tokenizer flags: sources, chat rendering, sequence length and packing."""

from __future__ import annotations

from argparse import ArgumentParser

from megatron_sft.data.formats import DATA_FORMATS  # no heavy imports: parsing stays cheap


def add_data_args(parser: ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument(
        "--finetune-hf-dataset", default=None, help="a Hugging Face dataset name with chat data; NAME:N for N records"
    )
    g.add_argument(
        "--data-path",
        nargs="+",
        default=None,
        help="JSONL files or directories, optionally weighted: [W1] PATH1 [W2] PATH2 ...; "
        "PATH:N takes N records drawn with --seed",
    )
    g.add_argument(
        "--data-format",
        choices=DATA_FORMATS,
        default="auto",
        help="record format: detected per record (auto), or this one for every record",
    )
    for split in ("train", "valid", "test"):
        g.add_argument(
            f"--{split}-data-path",
            nargs="+",
            default=None,
            help=f"the {split} split's own files (Megatron-LM's per-split form, instead of --data-path "
            "and --split)",
        )
    g.add_argument("--multiple-validation-sets", action="store_true",
                   help="validate each --valid-data-path file on its own, --eval-iters batches each (Megatron-LM's "
                   "flag); without it the files are one validation set, each file's loss still reported")
    g.add_argument("--split", default=None, help="train,valid,test weights of --data-path (default 969,30,1)")
    g.add_argument(
        "--data-cache-dir",
        default=None,
        help="where tokenized, packed data is cached (default: beside the first data file)",
    )
    g.add_argument(
        "--num-workers", type=int, default=1, help="processes that tokenize the data and data-loader workers"
    )
    g.add_argument(
        "--seq-length", type=int, default=None, help="packed sequence length in tokens (required for training)"
    )
    g.add_argument(
        "--max-sample-length",
        type=int,
        default=None,
        help="longest conversation, in tokens (default --seq-length); longer ones are truncated, or "
        "dropped with --drop-long-samples",
    )
    g.add_argument(
        "--chat-template",
        default=None,
        help="a Jinja file or template string (default: the tokenizer's own chat template)",
    )
    g.add_argument("--skip-invalid", action="store_true", help="skip malformed samples (counted) instead of failing")
    g.add_argument("--unmask-user", action="store_true", help="train on user turns too (default: assistant only)")
    g.add_argument("--loss-turns", choices=["all", "last"], default="all",
                   help="which assistant turns of a conversation are trained on: all (default) or the last only "
                   "(LLaMA-Factory's mask_history); a message's own \"loss\": true|false wins")
    g.add_argument("--loss-normalization", choices=["token", "sample"], default="token",
                   help="token (default): the mean over the global batch's supervised tokens; sample: each "
                   "conversation's mean over its supervised tokens, then the mean over conversations")
    long = g.add_mutually_exclusive_group()
    long.add_argument(
        "--truncate-long-samples", action="store_true", help="cut samples over --max-sample-length (default)"
    )
    long.add_argument(
        "--drop-long-samples", action="store_true", help="drop samples over --max-sample-length (counted)"
    )
    g.add_argument(
        "--packing-algorithm",
        choices=["best_fit", "first_fit_decreasing"],
        default="best_fit",
        help="how conversations are packed into sequences (none are ever split or dropped)",
    )
    g.add_argument("--reset-position-ids", action="store_true", help="accepted; packing always resets positions")
    g.add_argument("--reset-attention-mask", action="store_true", help="accepted; packing always isolates samples")
    g.add_argument(
        "--eod-mask-loss",
        action="store_true",
        help="no loss on the end-of-document token (Megatron-LM's meaning; assistant turn ends stay supervised)",
    )

    t = parser.add_argument_group("tokenizer")
    t.add_argument(
        "--tokenizer-type", choices=["HuggingFaceTokenizer"], help="only Hugging Face tokenizers are supported"
    )
    t.add_argument(
        "--tokenizer-model",
        help="HF tokenizer directory or name (default: the Hugging Face model of --load / --pretrained-model-path)",
    )
