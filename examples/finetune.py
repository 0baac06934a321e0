"""Supervised fine-tuning on Megatron-Core with Megatron-LM's flag names.

    torchrun --nproc_per_node 2 examples/finetune.py --load Qwen3-0.6B/ --data-path chat.jsonl \
        --tensor-model-parallel-size 2 --seq-length 4096 --global-batch-size 64 --lr 1e-5 \
        --train-samples 10000 --save ckpt/

Everything happens in megatron_sft.training; this file only parses flags and hands over.
"""

from __future__ import annotations


def main() -> None:
    # Heavy imports stay inside main(): dist_checkpointing's saver process re-imports this file.
    from megatron_sft.arguments import parse_args
    from megatron_sft.runtime.log import setup_logging

    setup_logging()
    args = parse_args()  # all flag errors reported together, before any heavy work
    from megatron_sft.runtime.distributed import shutdown
    from megatron_sft.training.loop import finetune

    finetune(args)
    shutdown()


if __name__ == "__main__":
    from megatron_sft.cli import run_main

    run_main(main)
