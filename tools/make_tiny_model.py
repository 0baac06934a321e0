"""Write tiny random Hugging Face checkpoints for tests and local experiments.

    python tools/make_tiny_model.py --family qwen3 --out DIR      # writes DIR
    python tools/make_tiny_model.py --all --out DIR               # writes DIR/<family> for every family
"""

from __future__ import annotations

import argparse
import pathlib

from megatron_sft.tiny import FAMILIES, make_tiny_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--family", choices=FAMILIES)
    which.add_argument("--all", action="store_true", help="one sub-directory per family")
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[pathlib.Path]:
    args = parse_args(argv)
    if args.all:
        paths = [make_tiny_model(f, args.out / f, seed=args.seed) for f in FAMILIES]
    else:
        paths = [make_tiny_model(args.family, args.out, seed=args.seed)]
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    main()
