"""Convert checkpoints: Hugging Face -> Megatron, or Megatron -> Hugging Face.

The direction follows --load: a Hugging Face directory is imported and saved as a weights-only
Megatron checkpoint (`release/`) at the given TP/PP/EP; a Megatron checkpoint (saved at any
layout) is loaded at TP=1 and exported as a Hugging Face directory.

    python tools/convert.py --load Qwen3-0.6B/ --save ckpt/ --tensor-model-parallel-size 2
    python tools/convert.py --load ckpt/ --save hf_out/ --export-dtype bf16
    torchrun --nproc_per_node 2 tools/convert.py --load ckpt/ --save hf_out/ --pipeline-model-parallel-size 2
"""

from __future__ import annotations


def main() -> int:
    from megatron_sft.apps import main as run_app

    return run_app("convert")


if __name__ == "__main__":  # dist_checkpointing's spawned saver re-imports this file: work only here
    from megatron_sft.cli import run_main

    run_main(main)
