"""Convert checkpoints: Hugging Face -> Megatron, or Megatron -> Hugging Face.

The direction follows --load: a Hugging Face directory is imported and saved as a weights-only
Megatron checkpoint (`release/`) at the given TP/PP/EP; a Megatron checkpoint (saved at any
layout) is loaded at the given layout (resharded) and exported as a Hugging Face directory by the writer
--save-hf uses (parity.json, manifest.json); a quantized or grouped-GEMM one by nvidia-modelopt's exporters, at TP=1.
convert.sh picks the checkpoint's own TP x PP.

    python tools/convert.py --load Qwen3-0.6B/ --save ckpt/ --tensor-model-parallel-size 2
    python tools/convert.py --load ckpt/ --save hf_out/ --export-dtype bf16
    torchrun --nproc_per_node 4 tools/convert.py --load ckpt/ --save hf_out/ --tensor-model-parallel-size 2 \
        --pipeline-model-parallel-size 2
"""

from __future__ import annotations


def main() -> int:
    from megatron_sft.apps import main as run_app

    return run_app("convert")


if __name__ == "__main__":  # dist_checkpointing's spawned saver re-imports this file: work only here
    from megatron_sft.cli import run_main

    run_main(main)
