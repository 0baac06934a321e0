"""Post-training quantization with nvidia-modelopt: calibrate a model on chat data and save it fake-quantized.

    python examples/quantize.py --load Qwen3-0.6B/ --save qwen3_fp8/ --export-quant-cfg fp8 \
        --data-path chat.jsonl --calib-size 512 --seq-length 2048
    torchrun --nproc_per_node 2 examples/quantize.py --load ckpt/ --save ckpt_int4/ --export-quant-cfg int4_awq \
        --tensor-model-parallel-size 2 --calib-data-path texts.jsonl

--load: a Hugging Face directory or a Megatron checkpoint (any layout). --save gets a Megatron checkpoint with
modelopt's state: finetune.py on it is quantization-aware training; generate.py / mmlu.py run it fake-quantized;
tools/convert.py (export.sh) writes modelopt's quantized Hugging Face format.
"""

from __future__ import annotations


def main() -> int:
    from megatron_sft.apps import main as run_app

    return run_app("quantize")


if __name__ == "__main__":  # dist_checkpointing's spawned saver re-imports this file: work only here
    from megatron_sft.cli import run_main

    run_main(main)
