"""Flags shared by tools/prepare_data.py and tools/inspect_data.py (Megatron-LM names), and tokenizer loading."""

from __future__ import annotations

import argparse

from megatron_sft.data.config import PACKING_ALGORITHMS, DataConfig
from megatron_sft.data.formats import DATA_FORMATS


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument(
        "--data-path",
        nargs="*",
        default=[],
        help="data files or folders, optionally 'W1 P1 W2 P2 ...'; PATH:N takes N records drawn with --seed",
    )
    g.add_argument(
        "--finetune-hf-dataset",
        default=None,
        help="a Hugging Face dataset name (loaded by datasets); NAME:N takes N records drawn with --seed",
    )
    g.add_argument(
        "--data-format",
        choices=DATA_FORMATS,
        default="auto",
        help="record format: detected per record (auto), or this one for every record",
    )
    g.add_argument("--finetune-hf-dataset-split", default="train")
    g.add_argument(
        "--tokenizer-model",
        required=True,
        help="HF tokenizer folder or name; 'tiny:<family>' for the built-in test tokenizers",
    )
    g.add_argument("--seq-length", type=int, default=4096)
    g.add_argument("--max-sample-length", type=int, default=None, help="longest sample (default --seq-length)")
    g.add_argument("--split", default="98,2,0")
    g.add_argument("--seed", type=int, default=1234)
    g.add_argument("--chat-template", default=None, help="a Jinja file replacing the tokenizer's chat template")
    g.add_argument("--skip-invalid", action="store_true", help="skip and count invalid records instead of failing")
    g.add_argument("--drop-long-samples", action="store_true",
                   help="drop samples over --max-sample-length (default: cut)")
    g.add_argument("--unmask-user", action="store_true", help="train on user turns too")
    g.add_argument("--eod-mask-loss", action="store_true")
    g.add_argument("--context-parallel-size", type=int, default=1)
    g.add_argument("--data-cache-dir", default=None)
    g.add_argument(
        "--num-workers",
        type=int,
        default=2,
        help="preparation worker processes (from 3 cores on; one process already overlaps rendering and tokenizing)",
    )
    g.add_argument("--packing-algorithm", choices=PACKING_ALGORITHMS, default="best_fit")
    g.add_argument("--sample", dest="sample_limit", type=int, default=None, help="read only the first N records")


def config_from_args(args: argparse.Namespace) -> DataConfig:
    return DataConfig.from_args(args)


def load_tokenizer(spec: str):
    """A fast tokenizer from a folder or hub name, or `tiny:<family>` (megatron_sft.tiny)."""
    if spec.startswith("tiny:"):
        from megatron_sft.tiny import make_tiny_tokenizer

        return make_tiny_tokenizer(spec.split(":", 1)[1])
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec, use_fast=True)
