"""Layer and block specs: the local spec (CPU, or no Transformer Engine) or Transformer Engine's."""

from __future__ import annotations

import dataclasses

from megatron.core.transformer.spec_utils import ModuleSpec

from megatron_sft.models.attention import PackedSDPAttention
from megatron_sft.models.norms import RMSNorm


def _local_layer_spec(config, attention_backend: str) -> ModuleSpec:
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    spec = get_gpt_layer_local_spec(
        num_experts=config.num_moe_experts,
        moe_grouped_gemm=False,
        qk_layernorm=config.qk_layernorm,
        normalization=config.normalization,
    )
    # Swap the torch norms for ours, which supports sequence parallelism, and (backend auto) the
    # core attention for the packed one: per-sample SDPA from cu_seqlens instead of an S x S mask.
    attn = spec.submodules.self_attention
    qk_norm = RMSNorm if config.qk_layernorm else attn.submodules.q_layernorm
    core = PackedSDPAttention if attention_backend == "auto" else attn.submodules.core_attention
    attn = dataclasses.replace(
        attn,
        submodules=dataclasses.replace(
            attn.submodules, q_layernorm=qk_norm, k_layernorm=qk_norm, core_attention=core
        ),
    )
    submodules = dataclasses.replace(
        spec.submodules, input_layernorm=RMSNorm, pre_mlp_layernorm=RMSNorm, self_attention=attn
    )
    return dataclasses.replace(spec, submodules=submodules)


def _te_layer_spec(config) -> ModuleSpec:
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

    return get_gpt_layer_with_transformer_engine_spec(
        num_experts=config.num_moe_experts,
        moe_grouped_gemm=config.moe_grouped_gemm,
        qk_layernorm=config.qk_layernorm,
    )


def decoder_block_spec(
    config, transformer_impl: str, vp_stage: int | None = None, attention_backend: str = "auto"
) -> ModuleSpec:
    """The whole decoder block for this pipeline stage, final norm included.

    attention_backend (local spec): "auto", the packed SDPA attention; "local", Megatron's
    DotProductAttention with an explicit mask."""
    if transformer_impl == "transformer_engine":
        return _te_layer_spec(config)  # TE's norms handle sequence parallelism themselves
    if config.normalization != "RMSNorm":
        raise ValueError(f"--normalization {config.normalization}: the local spec supports RMSNorm only")
    from megatron.core.transformer.transformer_block import (
        TransformerBlock,
        TransformerBlockSubmodules,
        get_num_layers_to_build,
    )

    layer = _local_layer_spec(config, attention_backend)
    n = get_num_layers_to_build(config, vp_stage=vp_stage)
    return ModuleSpec(
        module=TransformerBlock,
        submodules=TransformerBlockSubmodules(layer_specs=[layer] * n, layer_norm=RMSNorm),
    )
