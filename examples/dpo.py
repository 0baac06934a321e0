"""Preference training (DPO) after fine-tuning, on Megatron-Core with Megatron-LM's flag names.

    torchrun --nproc_per_node 2 examples/dpo.py --load ckpt/sft/ --finetune --data-path prefs.jsonl \
        --tensor-model-parallel-size 2 --seq-length 4096 --global-batch-size 64 --lr 5e-7 --train-iters 500 \
        --dpo-beta 0.1 --save ckpt/dpo/

Pairs: TRL's {"prompt", "chosen", "rejected"} (messages or strings), chosen/rejected conversations sharing their
prompt, or NeMo-RL's {"context", "completions": [{"rank", "completion"}]}. The reference log-probabilities are
computed once by the starting model and stored beside the data cache. Losses: --dpo-loss-type sigmoid (default),
ipo, hinge; --dpo-label-smoothing, --dpo-sft-weight (RPO).
"""

from __future__ import annotations


def main() -> int:
    from megatron_sft.apps import main as run_app

    return run_app("dpo")


if __name__ == "__main__":  # dist_checkpointing's spawned saver re-imports this file: work only here
    from megatron_sft.cli import run_main

    run_main(main)
