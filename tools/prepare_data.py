"""Tokenize, mask and pack chat data once into the memory-mapped cache that training reuses.

    python tools/prepare_data.py --data-path chat.jsonl --tokenizer-model Qwen/Qwen3-0.6B
        --seq-length 4096 --split 98,2,0 --num-workers 8 [--sample 1000]

Prints the cache folder and its statistics (also in <cache>/metadata.json). Training with the same
data flags finds the same cache and skips preparation.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    from megatron_sft.data.cache import prepare
    from megatron_sft.arguments.data_tools import add_data_arguments, config_from_args
    from megatron_sft.data.tokenizer import load_tokenizer
    from megatron_sft.data.stats import summary_lines
    from megatron_sft.errors import UserError

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = config_from_args(args)
        prepared = prepare(cfg, load_tokenizer(args.tokenizer_model), is_builder=True, progress=not args.no_progress)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"cache: {prepared.path}")
    for line in summary_lines(prepared.meta):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
