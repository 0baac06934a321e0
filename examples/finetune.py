"""Supervised fine-tuning on Megatron-Core with Megatron-LM's flag names.

    torchrun --nproc_per_node 2 examples/finetune.py --load Qwen3-0.6B/ --data-path chat.jsonl \
        --tensor-model-parallel-size 2 --seq-length 4096 --global-batch-size 64 --lr 1e-5 \
        --train-samples 10000 --save ckpt/

Everything happens in megatron_sft.training; this file only hands over (megatron_sft.run_finetune).
"""

from __future__ import annotations

if __name__ == "__main__":  # dist_checkpointing's spawned saver re-imports this file: work only here
    from megatron_sft.cli import run_main
    from megatron_sft.run_finetune import main

    run_main(main)
