"""Generation flags beyond megatron_sft.arguments.inference: pass to parse_args(extra=[...]) after it."""

from __future__ import annotations

from argparse import ArgumentParser


def add_generation_extra_args(parser: ArgumentParser) -> None:
    g = parser.add_argument_group("generation (more)")
    g.add_argument("--no-kv-cache", action="store_true",
                   help="recompute the whole sequence for every new token (slow; for checking the cache)")
    g.add_argument("--no-chat-template", action="store_true",
                   help="generate: feed prompts as raw text instead of rendering them with the chat template")
