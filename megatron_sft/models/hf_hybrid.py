"""A hybrid Hugging Face config.json (NemotronHForCausalLM) as Megatron-LM flag values for Megatron-Core's MambaModel.

Pure and cheap like hf_config.py. The layer pattern is one symbol per layer, Megatron's: M (Mamba-2), * (attention),
- (MLP), E (MoE); config.json gives it as `layers_block_type` (transformers 5) or `hybrid_override_pattern` (the
Hub's files). Whatever the Megatron-Core model built here would compute differently is refused in one line naming the
field, its value and the file.
"""

from __future__ import annotations

import os
from typing import Any

from megatron_sft.errors import UserError
from megatron_sft.models.registry import FAMILIES

# transformers' layer types (and their legacy names) as Megatron's pattern symbols
LAYER_SYMBOLS = {"linear_attention": "M", "mamba": "M", "full_attention": "*", "attention": "*", "mlp": "-",
                 "moe": "E"}
PATTERN_SYMBOLS = "M*-E"
# Older field names NemotronHConfig still accepts (as the Hub's configs may carry them).
_LEGACY_NAMES = {"mamba_n_groups": "n_groups", "mamba_d_conv": "conv_kernel", "mamba_dt_limit": "time_step_limit",
                 "mamba_chunk_size": "chunk_size", "mamba_conv_bias": "use_conv_bias"}
_REQUIRED = ("hidden_size", "num_attention_heads", "vocab_size")
# megatron-core 0.16.1's MambaMixer builds its gated norm with this epsilon, whatever the config says.
MIXER_NORM_EPS = 1e-5


def layer_pattern(cfg: dict, path: str | os.PathLike) -> str:
    """The pattern of `cfg`: layers_block_type wins over hybrid_override_pattern, as in NemotronHConfig."""
    types = cfg.get("layers_block_type") or cfg.get("layer_types")
    if types:
        unknown = sorted({t for t in types if t not in LAYER_SYMBOLS})
        if unknown:
            raise UserError(f"{path}: layers_block_type has unknown layer types {unknown}; known: "
                            f"{', '.join(sorted(LAYER_SYMBOLS))}")
        return "".join(LAYER_SYMBOLS[t] for t in types)
    pattern = cfg.get("hybrid_override_pattern")
    if not pattern:
        raise UserError(f"{path}: neither layers_block_type nor hybrid_override_pattern; not a complete hybrid config")
    check_pattern(pattern, f"{path}: hybrid_override_pattern")
    return pattern


def check_pattern(pattern: str, where: str) -> None:
    bad = sorted(set(pattern) - set(PATTERN_SYMBOLS))
    if bad:
        raise UserError(f"{where} {pattern!r} has symbols {bad}; use M (Mamba), * (attention), - (MLP), E (MoE)")


def hybrid_args_from_hf_config(config: dict, family: str, arch: str, path: str | os.PathLike) -> dict[str, Any]:
    """Megatron flag values (argparse dest names) of a hybrid config.json, with family/architecture/vocab_size."""
    given = {_LEGACY_NAMES.get(k, k): v for k, v in config.items() if v is not None}
    cfg = {**FAMILIES[family].hf_defaults, **given}
    missing = [k for k in _REQUIRED if k not in cfg]
    if missing:
        raise UserError(f"{path}: missing {', '.join(missing)}; not a complete {arch} config")
    pattern = layer_pattern(cfg, path)
    _refuse_unsupported(cfg, pattern, path)
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"] or cfg["num_attention_heads"]
    out: dict[str, Any] = {
        "family": family,
        "hf_architecture": arch,
        "vocab_size": cfg["vocab_size"],
        "num_layers": len(pattern),
        "hybrid_override_pattern": pattern,
        "hidden_size": cfg["hidden_size"],
        "ffn_hidden_size": cfg["intermediate_size"],  # the MLP layers' ('-')
        "num_attention_heads": heads,
        "group_query_attention": kv_heads != heads,
        "num_query_groups": kv_heads,
        "kv_channels": cfg["head_dim"] or cfg["hidden_size"] // heads,
        "max_position_embeddings": cfg["max_position_embeddings"],
        "position_embedding_type": "none",  # NemotronH's attention layers have no positional encoding
        "normalization": "RMSNorm",
        "norm_epsilon": cfg["layer_norm_epsilon"],
        "swiglu": False,
        "squared_relu": True,
        "add_bias_linear": False,
        "add_qkv_bias": False,
        "qk_layernorm": False,
        "untie_embeddings_and_output_weights": not cfg["tie_word_embeddings"],
        "attention_dropout": float(cfg["attention_dropout"]),
        "hidden_dropout": 0.0,
        "init_method_std": cfg["initializer_range"],
        "mamba_state_dim": cfg["ssm_state_size"],
        "mamba_head_dim": cfg["mamba_head_dim"],
        "mamba_num_groups": cfg["n_groups"],
        "mamba_num_heads": cfg["mamba_num_heads"],
        "mamba_chunk_size": cfg["chunk_size"],
        "mamba_conv_kernel": cfg["conv_kernel"],
        "num_experts": None,
    }
    if "E" in pattern:
        out.update(_moe_args(cfg))
    return out


def _moe_args(cfg: dict) -> dict[str, Any]:
    # NemotronH's router: sigmoid scores, the correction bias only for choosing experts, the chosen scores
    # renormalised (norm_topk_prob) and scaled: Megatron's sigmoid router with an expert bias, the same steps.
    # Its one shared expert is always built, at moe_shared_expert_intermediate_size.
    return {
        "num_experts": cfg["n_routed_experts"],
        "moe_ffn_hidden_size": cfg["moe_intermediate_size"],
        "moe_router_topk": cfg["num_experts_per_tok"],
        "moe_router_pre_softmax": False,
        "moe_router_score_function": "sigmoid",
        "moe_router_enable_expert_bias": True,
        "moe_router_topk_scaling_factor": float(cfg["routed_scaling_factor"]),
        "moe_shared_expert_intermediate_size": cfg["moe_shared_expert_intermediate_size"],
        "moe_router_load_balancing_type": "none",  # balanced by the expert bias (Megatron updates it in training)
        "moe_aux_loss_coeff": 0.0,
    }


def _as_float(value) -> float:
    """A number of config.json; transformers 5 writes infinity as {"__float__": "Infinity"}."""
    return float(value["__float__"] if isinstance(value, dict) and "__float__" in value else value)


def _refuse_unsupported(cfg: dict, pattern: str, path: str | os.PathLike) -> None:
    """NemotronHConfig settings the MambaModel built here would not reproduce."""
    wrong = []
    for key, want in (("mlp_hidden_act", "relu2"), ("mamba_hidden_act", "silu"), ("attention_bias", False),
                      ("mlp_bias", False), ("use_bias", False), ("mamba_proj_bias", False), ("use_conv_bias", True),
                      ("sliding_window", None)):
        if cfg.get(key) != want:
            wrong.append(f"{key}={cfg.get(key)!r} (supported: {want!r})")
    if cfg["tie_word_embeddings"]:
        wrong.append("tie_word_embeddings=true (transformers' NemotronH never ties lm_head to the embedding: it would "
                     "run with an lm_head the checkpoint does not have)")
    limit = [_as_float(v) for v in cfg["time_step_limit"]]
    if limit != [0.0, float("inf")]:
        wrong.append(f"time_step_limit={cfg['time_step_limit']} (Megatron-Core's Mamba layer applies no dt limit; "
                     "supported: [0.0, inf])")
    if "M" in pattern and float(cfg["layer_norm_epsilon"]) != MIXER_NORM_EPS:
        wrong.append(f"layer_norm_epsilon={cfg['layer_norm_epsilon']} (Megatron-Core's Mamba mixer norm uses "
                     f"{MIXER_NORM_EPS:g})")
    if "E" in pattern:
        if cfg.get("moe_latent_size"):
            wrong.append(f"moe_latent_size={cfg['moe_latent_size']} (Megatron-Core builds the latent projections "
                         "only with Transformer Engine)")
        if (cfg["n_group"], cfg["topk_group"]) != (1, 1):
            wrong.append(f"n_group={cfg['n_group']}, topk_group={cfg['topk_group']} (group routing scores groups "
                         "otherwise in Megatron-Core; supported: 1, 1)")
        if not cfg["norm_topk_prob"] and cfg["num_experts_per_tok"] > 1:
            wrong.append("norm_topk_prob=false (Megatron-Core's sigmoid router always renormalises top-k scores)")
    if cfg["num_nextn_predict_layers"]:
        wrong.append(f"num_nextn_predict_layers={cfg['num_nextn_predict_layers']} (multi-token prediction: "
                     "megatron-core 0.16.1's MambaModel has no MTP layers, and they are not dropped silently)")
    if wrong:
        raise UserError(f"{path}: not supported: {'; '.join(wrong)}")
