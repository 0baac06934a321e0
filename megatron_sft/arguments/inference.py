"""Generation and evaluation flags, all of them. Not part of the training parser: entry scripts that generate
ask for them with build_parser(extra=[add_inference_args]) (generate.py also add_generation_extra_args), so
a stray --temperature given to training is rejected instead of silently ignored."""

from __future__ import annotations

from argparse import ArgumentParser


def add_inference_args(parser: ArgumentParser) -> None:
    g = parser.add_argument_group("generation")
    g.add_argument("--prompt", action="append", help="a prompt; repeat for several")
    g.add_argument("--prompts-file", help="one prompt per line, or JSONL chat messages")
    g.add_argument("--chat-template-prompts", action="store_true", help="render prompts with the chat template")
    g.add_argument("--max-new-tokens", type=int, help="most tokens generated per prompt")
    g.add_argument("--temperature", type=float, help="0 = greedy")
    g.add_argument(
        "--top-p",
        type=float,
        help="nucleus sampling: keep the most likely tokens up to this probability mass (1.0: off)",
    )
    g.add_argument(
        "--top-k", type=int, help="sample among the k most likely tokens (0: off; with --temperature 0, greedy)"
    )
    g.add_argument(
        "--enable-thinking",
        action="store_true",
        help="Qwen3 chat template: let the model think (<think> ... </think>) before it answers",
    )
    g.add_argument("--inference-batch-size", type=int, help="prompts (or MMLU questions) per forward pass")
    g.add_argument("--output", help="write the completions here as JSONL (default: print them)")

    m = parser.add_argument_group("MMLU")
    m.add_argument("--mmlu-dataset", help="cais/mmlu (Hugging Face) or a local directory of dev/ and test/ CSV files")
    m.add_argument("--few-shot", type=int, help="dev-set examples before each MMLU question")
    m.add_argument("--fraction", type=float, help="share of each MMLU subject's test questions to evaluate")
    m.add_argument("--lower-bound", type=float, help="fail when accuracy is below this")
    m.add_argument("--results", help="write the MMLU report here as JSON")


def add_generation_extra_args(parser: ArgumentParser) -> None:
    """generate.py's own flags (not mmlu.py's)."""
    g = parser.add_argument_group("generation (more)")
    g.add_argument(
        "--no-kv-cache",
        action="store_true",
        help="recompute the whole sequence for every new token (slow; for checking the cache)",
    )
    g.add_argument(
        "--no-chat-template",
        action="store_true",
        help="generate: feed prompts as raw text instead of rendering them with the chat template",
    )
