"""MMLU (57 subjects) straight from a Megatron checkpoint or a Hugging Face directory, at any TP/PP layout.

    python examples/mmlu.py --load Qwen3-0.6B/ --mmlu-dataset cais/mmlu --few-shot 5 --fraction 0.1
    torchrun --nproc_per_node 2 examples/mmlu.py --load ckpt/ --pipeline-model-parallel-size 2 \
        --mmlu-dataset data/mmlu/ --results mmlu.json --lower-bound 0.4

--mmlu-dataset: a Hugging Face dataset name (through the datasets cache) or a local directory in the
original CSV layout (dev/, test/) or with Parquet files. Prompts are raw text ending in "Answer:"
(--chat-template-prompts renders them as a user turn); the answer is the letter with the highest
logit. Prints accuracy by subject and category; exits 1 when below --lower-bound (micro average).
"""

from __future__ import annotations


def main() -> int:
    from megatron_sft.apps import main as run_app

    return run_app("mmlu")


if __name__ == "__main__":  # dist_checkpointing's spawned saver re-imports this file: work only here
    from megatron_sft.cli import run_main

    run_main(main)
