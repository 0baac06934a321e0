"""Generate from a Megatron checkpoint or a Hugging Face directory, at any TP/PP/EP layout.

    python examples/generate.py --load Qwen3-0.6B/ --prompt "What is 2+2?" --max-new-tokens 64
    torchrun --nproc_per_node 2 examples/generate.py --load ckpt/ --tensor-model-parallel-size 2 \
        --prompts-file prompts.jsonl --temperature 0.7 --top-p 0.9 --seed 1 --output out.jsonl

Prompts: --prompt (repeatable), --prompts-file (JSONL with "messages", or one prompt per line), or a
few built-in ones. They are rendered with the chat template (--enable-thinking for templates that
have the switch) unless --no-chat-template; generation stops at the eos / end-of-turn tokens.
"""

from __future__ import annotations


def main() -> int:
    from megatron_sft.apps import main as run_app

    return run_app("generate")


if __name__ == "__main__":  # dist_checkpointing's spawned saver re-imports this file: work only here
    from megatron_sft.cli import run_main

    run_main(main)
