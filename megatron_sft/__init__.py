"""Supervised fine-tuning of Hugging Face chat models on NVIDIA Megatron-Core.

    from megatron_sft import sft
    sft(model_path="Qwen/Qwen3-0.6B", data_path="chat.jsonl", ckpt_output_dir="ckpt", num_epochs=3)
    lora_sft(model_path=..., data_path=..., ckpt_output_dir=..., lora_r=16)   # LoRA adapters only
    dpo(model_path="ckpt", data_path="prefs.jsonl", ckpt_output_dir="ckpt_dpo", beta=0.1)   # preference training

`import megatron_sft` stays light: `sft` is loaded on first use, and training runs in a child process.

The package is layered; a module imports only from its own layer or the layers below it, function-level
imports included (tests/unit/test_layering.py enforces LAYERS and the absence of import cycles):

    errors, config, cli    user errors; the run's configuration (RunConfig, its sections); the entry-point wrapper
    runtime, tiny, tasks, ops   devices, process groups, the CPU mode; tiny test models and tokenizers; demo tasks;
                           PyTorch state-space kernels (SSD scan, causal conv, gated RMSNorm)
    models                 model families, layer specs, GPTModel construction, unwrap
    to_mcore               RunConfig -> Megatron-Core's TransformerConfig, DDP and optimizer configs
    checkpointing          checkpoint layout, integrity, dist-checkpoint save/load, HF weights (no LoRA), GGUF
    peft                   LoRA adapters, their record and the PEFT folders
    data                   rendering, tokenizer, sources, packing, cache, batches
    arguments              the flags: parsed, resolved against checkpoints, derived, validated, made a RunConfig
    loading, startup       what --load holds (HF, Megatron, LoRA), decided once; the common start of every app
    training, inference, conversion, quantization      the applications' work
    apps, launch, api, run_finetune, __main__          the table of apps and their main(); the shell scripts'
                                                       planner; sft(), dpo(); the entry points
"""

from __future__ import annotations

__all__ = ["sft", "lora_sft", "dpo", "lora_dpo", "SFTResult", "SFTError"]

LAYERS = (
    ("errors", "config", "cli"),
    ("runtime", "tiny", "tasks", "ops"),
    ("models",),
    ("to_mcore",),
    ("checkpointing",),
    ("peft",),
    ("data",),
    ("arguments",),
    ("loading", "startup"),
    ("training", "inference", "conversion", "quantization"),
    ("apps", "launch", "api", "run_finetune", "__main__"),
)


def __getattr__(name: str):
    if name in __all__:
        from megatron_sft import api

        return getattr(api, name)
    raise AttributeError(f"module 'megatron_sft' has no attribute {name!r}")
