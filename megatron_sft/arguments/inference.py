"""Generation and evaluation flags, all of them. Not part of the training parser: entry scripts that generate
ask for them with build_parser(extra=[add_inference_args]) (generate.py also add_generation_extra_args), so
a stray --temperature given to training is rejected instead of silently ignored."""

from __future__ import annotations

from argparse import ArgumentParser

from megatron_sft.errors import UserError


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


def _check_inference_layout(cfg) -> None:
    if cfg.parallel.context_parallel_size > 1:
        raise UserError(f"--context-parallel-size {cfg.parallel.context_parallel_size}: generation and MMLU run with "
                        "context parallelism 1; use tensor or pipeline parallelism instead")
    if cfg.inference.inference_batch_size < 1:
        raise UserError(f"--inference-batch-size {cfg.inference.inference_batch_size}: must be >= 1")


def check_generation_args(cfg) -> None:
    """generate's refusals that need no model (the sampling settings' own, too)."""
    _check_inference_layout(cfg)
    if cfg.inference.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {cfg.inference.max_new_tokens}: must be >= 1")
    check_sampling(cfg.inference.temperature, cfg.inference.top_k, cfg.inference.top_p)


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """The one check of the sampling settings (inference/sampling.py's SamplingSettings makes it too)."""
    if temperature < 0:
        raise UserError(f"--temperature {temperature}: must be >= 0 (0 = greedy)")
    if top_k is not None and top_k < 1:
        raise UserError(f"--top-k {top_k}: must be >= 1 (or left out)")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise UserError(f"--top-p {top_p}: must be in (0, 1] (or left out)")


def check_mmlu_args(cfg) -> None:
    _check_inference_layout(cfg)
    if not 0.0 < cfg.inference.fraction <= 1.0:
        raise UserError(f"--fraction {cfg.inference.fraction}: must be in (0, 1]")
    if cfg.inference.few_shot < 0:
        raise UserError(f"--few-shot {cfg.inference.few_shot}: must be >= 0")
