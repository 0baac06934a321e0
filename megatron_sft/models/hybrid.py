"""Hybrid models in the Nemotron-H pattern (Mamba-2, attention, MLP and MoE layers: symbols M, *, -, E) on
Megatron-Core's MambaModel, with the local spec: the project's RMSNorm and packed attention, Megatron's parallel
linears, and the PyTorch state-space kernels when mamba_ssm is absent (runtime/mamba_fallback.py).

    model = build_hybrid_model(transformer_config, vocab_size, "M*M-E", max_sequence_length=4096)

builder.py calls it for a model with a --hybrid-override-pattern (family nemotron_h, hf_hybrid.py).
"""

from __future__ import annotations

from megatron.core.transformer.spec_utils import ModuleSpec

from megatron_sft.models.attention import PackedSDPAttention
from megatron_sft.models.norms import RMSNorm


class ConfigRMSNorm(RMSNorm):
    """MambaLayer builds its norm without an epsilon (megatron-core 0.16.1): this one takes the config's. A class,
    not a function: build_module would return a function unbuilt."""

    def __init__(self, config, hidden_size: int, eps: float | None = None):
        super().__init__(config, hidden_size, config.layernorm_epsilon if eps is None else eps)


def _attention_layer(attention_backend: str) -> ModuleSpec:
    from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

    core = PackedSDPAttention if attention_backend == "auto" else DotProductAttention
    attention = ModuleSpec(module=SelfAttention, params={"attn_mask_type": AttnMaskType.causal},
                           submodules=SelfAttentionSubmodules(linear_qkv=ColumnParallelLinear, core_attention=core,
                                                              linear_proj=RowParallelLinear))
    return ModuleSpec(module=TransformerLayer, submodules=TransformerLayerSubmodules(
        input_layernorm=ConfigRMSNorm, self_attention=attention, self_attn_bda=get_bias_dropout_add))


def _mlp_layer(mlp: ModuleSpec) -> ModuleSpec:
    from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
    from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

    return ModuleSpec(module=TransformerLayer, submodules=TransformerLayerSubmodules(
        pre_mlp_layernorm=ConfigRMSNorm, mlp=mlp, mlp_bda=get_bias_dropout_add))


def hybrid_stack_spec(config, attention_backend: str = "auto", chunk_size: int = 128, conv_kernel: int = 4
                      ) -> ModuleSpec:
    """The MambaStack of the local spec: M a MambaLayer (pre-norm, MambaMixer), * attention, - MLP, E MoE layers."""
    from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
    from megatron.core.models.gpt.moe_module_specs import get_moe_module_spec
    from megatron.core.ssm.mamba_block import MambaStack, MambaStackSubmodules
    from megatron.core.ssm.mamba_layer import MambaLayer, MambaLayerSubmodules
    from megatron.core.ssm.mamba_mixer import MambaMixer, MambaMixerSubmodules
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.mlp import MLP, MLPSubmodules

    mixer = ModuleSpec(module=MambaMixer, params={"chunk_size": chunk_size, "d_conv": conv_kernel},
                       submodules=MambaMixerSubmodules(in_proj=ColumnParallelLinear, out_proj=RowParallelLinear))
    mlp = ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=ColumnParallelLinear,
                                                          linear_fc2=RowParallelLinear))
    moe = get_moe_module_spec(use_te=False, num_experts=config.num_moe_experts or 1, moe_grouped_gemm=False)
    return ModuleSpec(module=MambaStack, submodules=MambaStackSubmodules(
        mamba_layer=ModuleSpec(module=MambaLayer, submodules=MambaLayerSubmodules(
            norm=ConfigRMSNorm, mixer=mixer, mamba_bda=get_bias_dropout_add)),
        attention_layer=_attention_layer(attention_backend), mlp_layer=_mlp_layer(mlp), moe_layer=_mlp_layer(moe)))


def _local_final_norm() -> None:
    """MambaStack builds its final norm as Transformer Engine's TENorm; without TE, the project's RMSNorm."""
    import importlib.util

    from megatron.core.ssm import mamba_block

    if importlib.util.find_spec("transformer_engine") is None:
        mamba_block.TENorm = lambda config, hidden_size, eps=1e-5: RMSNorm(config, hidden_size, eps)


def build_hybrid_model(config, vocab_size: int, pattern: str, max_sequence_length: int,
                       share_embeddings: bool = False, attention_backend: str = "auto", chunk_size: int = 128,
                       conv_kernel: int = 4, pre_process: bool = True, post_process: bool = True):
    """A MambaModel of `pattern` (one symbol per layer) for this rank's pipeline stage; no positional embedding
    (the attention layers of Nemotron-H use none)."""
    from megatron.core.models.mamba import MambaModel

    from megatron_sft.runtime import mamba_fallback

    mamba_fallback.enable()
    _local_final_norm()
    if len(pattern) != config.num_layers:
        raise ValueError(f"hybrid pattern {pattern!r} has {len(pattern)} layers; the config has {config.num_layers}")
    spec = hybrid_stack_spec(config, attention_backend, chunk_size, conv_kernel)
    return MambaModel(config, spec, vocab_size, max_sequence_length, pre_process=pre_process,
                      post_process=post_process, hybrid_override_pattern=pattern, position_embedding_type="none",
                      share_embeddings_and_output_weights=share_embeddings)
