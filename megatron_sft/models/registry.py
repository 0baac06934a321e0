"""Supported model families, registered by name in one place each.

A family ties a Hugging Face architecture (what config.json names and what modelopt's
importer/exporter maps) to how this project builds the Megatron model for it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelFamily:
    name: str
    hf_architecture: str
    moe: bool = False
    description: str = ""


FAMILIES: dict[str, ModelFamily] = {}


def register(family: ModelFamily) -> ModelFamily:
    if family.name in FAMILIES:
        raise ValueError(f"model family {family.name!r} registered twice")
    FAMILIES[family.name] = family
    return family


def family_for_architecture(architecture: str) -> ModelFamily | None:
    for family in FAMILIES.values():
        if family.hf_architecture == architecture:
            return family
    return None


def supported_architectures() -> list[str]:
    return [f.hf_architecture for f in FAMILIES.values()]


register(ModelFamily("qwen3", "Qwen3ForCausalLM", description="Qwen3 dense: qk-layernorm, GQA, explicit head_dim"))
register(ModelFamily("qwen3_moe", "Qwen3MoeForCausalLM", moe=True, description="Qwen3-MoE: every layer MoE"))
register(ModelFamily("qwen2", "Qwen2ForCausalLM", description="Qwen2 / Qwen2.5: qkv bias"))
register(ModelFamily("llama", "LlamaForCausalLM", description="Llama 3.x: llama3 RoPE scaling"))
