"""Supervised fine-tuning of Hugging Face chat models on NVIDIA Megatron-Core.

    from megatron_sft import sft
    sft(model_path="Qwen/Qwen3-0.6B", data_path="chat.jsonl", ckpt_output_dir="ckpt", num_epochs=3)
    lora_sft(model_path=..., data_path=..., ckpt_output_dir=..., lora_r=16)   # LoRA adapters only

`import megatron_sft` stays light: `sft` is loaded on first use, and training runs in a child process.
"""

from __future__ import annotations

__all__ = ["sft", "lora_sft", "SFTResult", "SFTError"]


def __getattr__(name: str):
    if name in __all__:
        from megatron_sft import api

        return getattr(api, name)
    raise AttributeError(f"module 'megatron_sft' has no attribute {name!r}")
