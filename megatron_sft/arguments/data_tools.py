"""Flags shared by tools/prepare_data.py and tools/inspect_data.py (Megatron-LM names)."""

from __future__ import annotations

import argparse

from megatron_sft.arguments.data import add_data_args
from megatron_sft.config import DataConfig
from megatron_sft.errors import UserError


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Training's own data and tokenizer flags (one definition: the same defaults, so the same cache), plus
    what the tools need that training takes from elsewhere."""
    add_data_args(parser)
    g = parser.add_argument_group("data tools")
    g.add_argument("--seed", type=int, help="as training's --seed: it draws PATH:N subsets and splits")
    g.add_argument(
        "--context-parallel-size",
        type=int,
        help="as training's: samples are padded to a multiple of 2 x CP, so the cache depends on it",
    )
    g.add_argument("--finetune-hf-dataset-split", default="train", help="split of --finetune-hf-dataset to read")
    g.add_argument("--sample", dest="sample_limit", type=int, default=None, help="read only the first N records")


def config_from_args(args: argparse.Namespace) -> DataConfig:
    if args.seq_length is None:
        raise UserError("--seq-length is required: the packed sequence length, as training's (e.g. --seq-length 4096)")
    return DataConfig.from_args(args)
