"""Supported model families, registered by name in one place each.

A family ties a Hugging Face architecture (what config.json names, and what modelopt's
importer/exporter maps) to what Megatron needs to know beyond config.json: which fields
transformers defaults when config.json omits them, qk-layernorm, qkv bias, MoE, the hybrid layer pattern.
Pure Python: argument parsing reads it before any heavy import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# transformers 5.14.1 config-class defaults shared by every family (used when config.json omits a field).
_HF_COMMON = {
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "max_position_embeddings": 32768,
    "head_dim": None,  # None: hidden_size // num_attention_heads
    "hidden_act": "silu",
    "use_sliding_window": False,
}


@dataclass(frozen=True)
class ModelFamily:
    name: str
    hf_architecture: str
    hf_defaults: dict[str, Any] = field(default_factory=dict)
    qk_layernorm: bool = False
    qkv_bias: bool = False  # q/k/v biases hard-coded by the HF model (Qwen2)
    moe: bool = False
    hybrid: bool = False  # Megatron-Core's MambaModel: Mamba-2, attention, MLP and MoE layers in a pattern
    gguf_architecture: str | None = None  # `general.architecture` of its GGUF files (llama.cpp's name)


FAMILIES: dict[str, ModelFamily] = {}


def register(family: ModelFamily) -> ModelFamily:
    if family.name in FAMILIES:
        raise ValueError(f"model family {family.name!r} registered twice")
    FAMILIES[family.name] = family
    return family


def family_for_architecture(architecture: str) -> ModelFamily | None:
    return next((f for f in FAMILIES.values() if f.hf_architecture == architecture), None)


def supported_architectures() -> list[str]:
    return [f.hf_architecture for f in FAMILIES.values()]


def family_for_gguf(gguf_architecture: str) -> ModelFamily | None:
    return next((f for f in FAMILIES.values() if f.gguf_architecture == gguf_architecture), None)


register(ModelFamily(
    "qwen3", "Qwen3ForCausalLM", {**_HF_COMMON, "num_key_value_heads": 32, "head_dim": 128}, qk_layernorm=True,
    gguf_architecture="qwen3",
))
register(ModelFamily(
    "qwen3_moe", "Qwen3MoeForCausalLM",
    {**_HF_COMMON, "num_key_value_heads": 4, "num_experts": 128, "moe_intermediate_size": 768,
     "num_experts_per_tok": 8, "norm_topk_prob": False, "router_aux_loss_coef": 0.001,
     "decoder_sparse_step": 1, "mlp_only_layers": []},
    qk_layernorm=True, moe=True, gguf_architecture="qwen3moe",
))
register(ModelFamily("qwen2", "Qwen2ForCausalLM", {**_HF_COMMON, "num_key_value_heads": 32}, qkv_bias=True,
                     gguf_architecture="qwen2"))
register(ModelFamily(
    "llama", "LlamaForCausalLM",
    {**_HF_COMMON, "num_key_value_heads": None, "max_position_embeddings": 2048, "mlp_bias": False},
    gguf_architecture="llama",
))

# Nemotron-H, Nemotron Nano 2 and Nemotron 3 Nano: Mamba-2 (M), attention (*), MLP (-) and MoE (E) layers in the
# order `layers_block_type` / `hybrid_override_pattern` gives. NemotronHConfig's defaults (transformers 5.14.1).
register(ModelFamily(
    "nemotron_h", "NemotronHForCausalLM",
    {"tie_word_embeddings": False, "attention_bias": False, "attention_dropout": 0.0, "initializer_range": 0.02,
     "max_position_embeddings": 4096, "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 21504,
     "mlp_hidden_act": "relu2",
     "mlp_bias": False, "ssm_state_size": 128, "mamba_num_heads": 128, "mamba_head_dim": 64,
     "mamba_hidden_act": "silu", "n_groups": 8, "conv_kernel": 4, "chunk_size": 128, "use_conv_bias": True,
     "mamba_proj_bias": False, "use_bias": False, "time_step_limit": [0.0, float("inf")], "layer_norm_epsilon": 1e-5,
     "n_routed_experts": 8, "n_shared_experts": 1, "moe_intermediate_size": 7688,
     "moe_shared_expert_intermediate_size": 7688, "moe_latent_size": None, "num_experts_per_tok": 2,
     "routed_scaling_factor": 1.0, "n_group": 1, "topk_group": 1, "norm_topk_prob": True,
     "num_nextn_predict_layers": 0, "sliding_window": None},
    moe=True, hybrid=True,
))
