"""Generation and evaluation flags. Not part of the training parser: entry scripts that generate
ask for them with build_parser(extra=[add_inference_args]), so a stray --temperature given to
training is rejected instead of silently ignored."""

from __future__ import annotations

from argparse import ArgumentParser


def add_inference_args(parser: ArgumentParser) -> None:
    g = parser.add_argument_group("generation")
    g.add_argument("--prompt", action="append", default=None, help="a prompt; repeat for several")
    g.add_argument("--prompts-file", default=None, help="one prompt per line, or JSONL chat messages")
    g.add_argument("--chat-template-prompts", action="store_true", help="render prompts with the chat template")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--enable-thinking", action="store_true")
    g.add_argument("--inference-batch-size", type=int, default=1)
    g.add_argument("--output", default=None)

    m = parser.add_argument_group("MMLU")
    m.add_argument("--mmlu-dataset", default="cais/mmlu")
    m.add_argument("--few-shot", type=int, default=0)
    m.add_argument("--fraction", type=float, default=1.0)
    m.add_argument("--lower-bound", type=float, default=None, help="fail when accuracy is below this")
    m.add_argument("--results", default=None)
