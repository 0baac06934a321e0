"""The one translation from resolved arguments to Megatron-Core's config objects.

Everything that builds a model, a DDP wrapper or an optimizer gets its config from here, so a
flag means the same thing everywhere and CPU-specific choices live in one place.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from megatron_sft.config import RunConfig

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def params_dtype(cfg: RunConfig) -> torch.dtype:
    """The run's dtype (derived once from --bf16 / --fp16 in arguments/derive.py)."""
    return dtype_from_name(cfg.training.params_dtype)


def dtype_from_name(name: str) -> torch.dtype:
    return _DTYPES[name]


def _fused_rope_available() -> bool:
    """Transformer Engine's fused RoPE (both layouts: THD training, SBHD generation)."""
    from megatron.core.models.common.embeddings import rope_utils

    return rope_utils.fused_apply_rotary_pos_emb is not None and rope_utils.fused_apply_rotary_pos_emb_thd is not None


def _grad_accum_fusion_available() -> bool:
    """Apex's fused_weight_gradient_mlp_cuda, which the local spec's parallel linears call."""
    import importlib.util

    return importlib.util.find_spec("fused_weight_gradient_mlp_cuda") is not None


_fusion_notice_given = False


def _kernel_fusions(cfg: RunConfig, on_cpu: bool) -> dict:
    """RoPE and gradient-accumulation fusion only where their kernels import: Megatron would raise
    'apply_rope_fusion is not available' (no Transformer Engine) or an Apex error otherwise."""
    global _fusion_notice_given
    wanted = {
        "apply_rope_fusion": (bool(cfg.model.apply_rope_fusion), _fused_rope_available,
                              "Transformer Engine"),
        "gradient_accumulation_fusion": (bool(cfg.training.gradient_accumulation_fusion),
                                         _grad_accum_fusion_available, "Apex"),
    }
    fields, missing = {}, []
    for name, (asked, available, provider) in wanted.items():
        fields[name] = asked and not on_cpu and available()
        if asked and not on_cpu and not fields[name]:
            missing.append(f"{name} (needs {provider})")
    if missing and not _fusion_notice_given:
        log.info("fusions off, their kernels are not installed: %s", ", ".join(missing))
        _fusion_notice_given = True
    return fields


def _fusions(cfg: RunConfig, on_cpu: bool) -> dict:
    """Fused kernels are CUDA-only. Masked-softmax fusion is always off: the local backend passes an
    explicit block-diagonal mask, and the fused causal kernel would ignore it."""
    return dict(
        masked_softmax_fusion=False,
        # Megatron fuses bias with GeLU or SwiGLU only (squared ReLU: unfused)
        bias_activation_fusion=bool(cfg.model.bias_swiglu_fusion) and not on_cpu and not cfg.model.squared_relu,
        bias_dropout_fusion=bool(cfg.model.bias_dropout_fusion) and not on_cpu,
        persist_layer_norm=not on_cpu,
        # Over gloo, batched isend/irecv corrupted activations in the interleaved pipeline schedule
        # (later micro-batches got another loss); plain isend/irecv is exact.
        batch_p2p_comm=not on_cpu,
        **_kernel_fusions(cfg, on_cpu),
    )


def _moe_fields(cfg: RunConfig, on_cpu: bool) -> dict:
    if not cfg.model.num_experts:
        return {}
    dispatcher = cfg.model.moe_token_dispatcher_type or "allgather"
    if on_cpu and dispatcher != "allgather":
        # The alltoall dispatcher fails over gloo; allgather gives the same result.
        log.info("CPU mode: --moe-token-dispatcher-type %s replaced by allgather", dispatcher)
        dispatcher = "allgather"
    return dict(
        num_moe_experts=cfg.model.num_experts,
        moe_ffn_hidden_size=cfg.model.moe_ffn_hidden_size,
        moe_router_topk=cfg.model.moe_router_topk,
        moe_router_pre_softmax=bool(cfg.model.moe_router_pre_softmax),
        moe_router_score_function=cfg.model.moe_router_score_function or "softmax",
        moe_router_load_balancing_type=cfg.model.moe_router_load_balancing_type or "aux_loss",
        moe_aux_loss_coeff=float(cfg.model.moe_aux_loss_coeff or 0.0),
        moe_token_dispatcher_type=dispatcher,
        moe_grouped_gemm=bool(cfg.model.moe_grouped_gemm) and not on_cpu,
        moe_router_dtype=cfg.model.moe_router_dtype,
        moe_router_enable_expert_bias=bool(cfg.model.moe_router_enable_expert_bias),
        # the expert bias is part of the frozen base under LoRA: a PEFT adapter could not carry its updates
        moe_router_bias_update_rate=0.0 if cfg.is_lora else 1e-3,
        moe_router_topk_scaling_factor=cfg.model.moe_router_topk_scaling_factor,
        moe_shared_expert_intermediate_size=cfg.model.moe_shared_expert_intermediate_size,
    )


def squared_relu(x: torch.Tensor) -> torch.Tensor:
    """relu(x)^2, uncompiled: megatron.core.activations.squared_relu is wrapped in torch.compile, whose CPU code
    gave wrong values (NaN) on other instruction sets (ATEN_CPU_CAPABILITY=avx2) where eager torch is right."""
    return torch.square(F.relu(x))


def _activation(cfg: RunConfig):
    return squared_relu if cfg.model.squared_relu else F.silu if cfg.model.swiglu else F.gelu


def _hybrid_fields(cfg: RunConfig) -> dict:
    """The Mamba layers' shapes (chunk size and convolution width are the layer spec's: models/hybrid.py)."""
    m = cfg.model
    if not m.hybrid_override_pattern:
        return {}
    return dict(is_hybrid_model=True, mamba_state_dim=m.mamba_state_dim, mamba_head_dim=m.mamba_head_dim,
                mamba_num_groups=m.mamba_num_groups, mamba_num_heads=m.mamba_num_heads)


def _recompute_fields(cfg: RunConfig) -> dict:
    if not cfg.training.recompute_granularity:
        return {}
    return dict(
        recompute_granularity=cfg.training.recompute_granularity,
        recompute_method=cfg.training.recompute_method,
        recompute_num_layers=cfg.training.recompute_num_layers,
    )


def transformer_config(cfg: RunConfig, skip_init: bool = False):
    """TransformerConfig for the resolved architecture and layout in `cfg`.

    `skip_init` leaves weights uninitialised (they are about to be loaded): minutes saved on big
    models. Only for conversion and inference: Megatron-Core marks tensor-parallel weights
    (`tensor_model_parallel`) only while initialising them, and the gradient norm needs that mark.
    """
    from megatron.core.transformer.transformer_config import TransformerConfig

    on_cpu = cfg.runtime.device == "cpu"
    dtype = params_dtype(cfg)
    tp = cfg.parallel.tensor_model_parallel_size
    return TransformerConfig(
        num_layers=cfg.model.num_layers,
        hidden_size=cfg.model.hidden_size,
        ffn_hidden_size=cfg.model.ffn_hidden_size,
        num_attention_heads=cfg.model.num_attention_heads,
        num_query_groups=cfg.model.num_query_groups,
        kv_channels=cfg.model.kv_channels,
        normalization=cfg.model.normalization,
        layernorm_epsilon=cfg.model.norm_epsilon,
        gated_linear_unit=bool(cfg.model.swiglu),
        activation_func=_activation(cfg),
        add_bias_linear=bool(cfg.model.add_bias_linear),
        add_qkv_bias=bool(cfg.model.add_qkv_bias),
        qk_layernorm=bool(cfg.model.qk_layernorm),
        hidden_dropout=cfg.model.hidden_dropout,
        attention_dropout=cfg.model.attention_dropout,
        init_method_std=cfg.model.init_method_std,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=cfg.parallel.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=cfg.parallel.virtual_pipeline_model_parallel_size,
        context_parallel_size=cfg.parallel.context_parallel_size,
        expert_model_parallel_size=cfg.parallel.expert_model_parallel_size,
        expert_tensor_parallel_size=cfg.parallel.expert_tensor_parallel_size,  # derived: TP unless given
        sequence_parallel=cfg.parallel.sequence_parallel,  # derived: off at TP=1
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu_initialization=on_cpu,
        perform_initialization=not skip_init,
        attention_softmax_in_fp32=True,
        # The loss is a sum over supervised tokens; Megatron divides the gradients by the token
        # count of the whole global batch (all micro-batches, DP and CP ranks) in finalize_model_grads.
        calculate_per_token_loss=True,
        **_fusions(cfg, on_cpu),
        **_moe_fields(cfg, on_cpu),
        **_recompute_fields(cfg),
        **_hybrid_fields(cfg),
    )


def ddp_config(cfg: RunConfig):
    """Megatron DDP: grads reduced in fp32, overlap only where it helps (GPU)."""
    from megatron.core.distributed import DistributedDataParallelConfig

    on_gpu = cfg.runtime.device == "cuda"
    return DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=bool(cfg.parallel.overlap_grad_reduce) and on_gpu,
        overlap_param_gather=bool(cfg.parallel.overlap_param_gather) and on_gpu,
        use_distributed_optimizer=bool(cfg.parallel.use_distributed_optimizer),
        # The training loop checks loss and grad norm itself and names the iteration; DDP's own
        # check would raise a bare RuntimeError from inside the backward pass.
        check_for_nan_in_grad=False,
        bucket_size=None,
    )


def optimizer_config(cfg: RunConfig):
    """Adam with Megatron's mixed-precision handling (fp32 main params for bf16/fp16)."""
    from megatron.core.optimizer import OptimizerConfig

    dtype = params_dtype(cfg)
    return OptimizerConfig(
        optimizer="adam",
        lr=cfg.training.lr,
        min_lr=cfg.training.min_lr,
        weight_decay=cfg.training.weight_decay,
        adam_beta1=cfg.training.adam_beta1,
        adam_beta2=cfg.training.adam_beta2,
        adam_eps=cfg.training.adam_eps,
        clip_grad=cfg.training.clip_grad,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        params_dtype=dtype,
        use_distributed_optimizer=bool(cfg.parallel.use_distributed_optimizer),
    )
