"""Show prepared samples with the supervised (trained-on) tokens marked, and the data statistics.

    python tools/inspect_data.py --data-path chat.jsonl --tokenizer-model Qwen/Qwen3-0.6B --index 0
    python tools/inspect_data.py --cache ~/.cache/megatron_sft/data/<key> --tokenizer-model ... --pack 3

Supervised text is printed between ⟦ and ⟧ (in green with --color). A token counts as supervised when
it is a label with loss, i.e. the model learns to predict it. Text whose message carries a loss "weight" other
than 1 is followed by it: ⟦...⟧×0.5.
"""

from __future__ import annotations

import argparse
import logging
import sys

OPEN, CLOSE = "\u27e6", "\u27e7"
GREEN, RESET = "\033[32m", "\033[0m"


def marked_text(tokenizer, ids, supervised, color: bool = False) -> str:
    """Decode runs of equal loss weight separately and wrap the supervised ones (with their weight if not 1)."""
    out, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or supervised[i] != supervised[start]:
            text = tokenizer.decode([int(t) for t in ids[start:i]], skip_special_tokens=False)
            weight = float(supervised[start])
            if weight:
                text = f"{GREEN}{text}{RESET}" if color else f"{OPEN}{text}{CLOSE}"
                text += f"\u00d7{weight:g}" if weight != 1 else ""
            out.append(text)
            start = i
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    from megatron_sft.data.cache import PreparedData, prepare
    from megatron_sft.arguments.data_tools import add_data_arguments, config_from_args
    from megatron_sft.data.tokenizer import load_tokenizer
    from megatron_sft.data.stats import summary_lines
    from megatron_sft.errors import UserError

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    parser.add_argument("--cache", default=None, help="an existing cache folder (then the data flags are unused)")
    parser.add_argument("--index", type=int, nargs="*", default=[0], help="sample indices to show")
    parser.add_argument("--pack", type=int, default=None, help="show the samples of this packed sequence instead")
    parser.add_argument("--split-name", default="train", choices=("train", "valid", "test"),
                        help="the split whose packs --pack counts")
    parser.add_argument("--color", action="store_true", help="show supervised text in green instead of between ⟦ ⟧")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        tokenizer = load_tokenizer(args.tokenizer_model)
        prepared = (
            PreparedData(args.cache)
            if args.cache
            else prepare(config_from_args(args), tokenizer, is_builder=True, progress=False)
        )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    indices = args.index
    if args.pack is not None:
        offsets, samples = prepared.packs(args.split_name)
        indices = [int(s) for s in samples[offsets[args.pack] : offsets[args.pack + 1]]]
        print(f"{args.split_name} pack {args.pack}: samples {indices}")
    for i in indices:
        if not 0 <= i < len(prepared):
            print(f"error: sample {i} out of range [0, {len(prepared)})", file=sys.stderr)
            return 2
        ids, supervised = prepared.sample(i)
        print(f"--- sample {i}: {len(ids)} tokens, {int((supervised[1:] > 0).sum())} supervised ---")
        print(marked_text(tokenizer, ids, supervised, args.color))
    print("--- statistics ---")
    for line in summary_lines(prepared.meta):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
