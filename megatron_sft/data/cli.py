"""Flags shared by tools/prepare_data.py and tools/inspect_data.py (Megatron-LM names), and tokenizer loading."""

from __future__ import annotations

import argparse

from megatron_sft.data.config import DataConfig


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Training's own data and tokenizer flags (one definition: the same defaults, so the same cache), plus
    what the tools need that training takes from elsewhere."""
    from megatron_sft.arguments.data import add_data_args

    add_data_args(parser)
    g = parser.add_argument_group("data tools")
    g.add_argument("--seed", type=int, default=1234, help="as training's --seed: it draws PATH:N subsets and splits")
    g.add_argument("--context-parallel-size", type=int, default=1,
                   help="as training's: samples are padded to a multiple of 2 x CP, so the cache depends on it")
    g.add_argument("--finetune-hf-dataset-split", default="train")
    g.add_argument("--sample", dest="sample_limit", type=int, default=None, help="read only the first N records")


def config_from_args(args: argparse.Namespace) -> DataConfig:
    return DataConfig.from_args(args)


def load_tokenizer(spec: str | None):
    """A fast tokenizer from a folder or hub name, or `tiny:<family>` (megatron_sft.tiny)."""
    from megatron_sft.arguments.inputs import check_tokenizer
    from megatron_sft.errors import UserError

    if not spec:
        raise UserError("--tokenizer-model is required: the Hugging Face tokenizer (or model) directory or name")
    if spec.startswith("tiny:"):
        from megatron_sft.tiny import make_tiny_tokenizer

        return make_tiny_tokenizer(spec.split(":", 1)[1])
    problems: list[str] = []
    check_tokenizer(spec, problems)
    if problems:
        raise UserError(problems[0])
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec, use_fast=True)
