"""Map a Hugging Face config.json to Megatron-LM flag values.

Pure and cheap: plain dicts and `json`, no torch / transformers, so argument parsing can use it.
Every architecture value the model needs comes from here when the weights come from Hugging Face;
anything Megatron-Core cannot express exactly is refused with the field, its value and the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from megatron_sft.errors import UserError
from megatron_sft.models.registry import FAMILIES, family_for_architecture, supported_architectures

_REQUIRED = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size")

# Megatron-Core 0.16.1 RotaryEmbedding._apply_scaling takes only the factor; the rest is fixed.
MCORE_LLAMA3_ROPE = {"original_max_position_embeddings": 8192, "low_freq_factor": 1.0, "high_freq_factor": 4.0}

# The config.json field behind each Megatron value, so messages can say where a value came from.
HF_FIELDS = {
    "num_layers": "num_hidden_layers",
    "hidden_size": "hidden_size",
    "ffn_hidden_size": "intermediate_size",
    "num_attention_heads": "num_attention_heads",
    "num_query_groups": "num_key_value_heads",
    "kv_channels": "head_dim",
    "max_position_embeddings": "max_position_embeddings",
    "rotary_base": "rope_theta",
    "rotary_percent": "partial_rotary_factor",
    "rope_scaling_factor": "rope_parameters.factor",
    "norm_epsilon": "rms_norm_eps",
    "untie_embeddings_and_output_weights": "tie_word_embeddings",
    "attention_dropout": "attention_dropout",
    "init_method_std": "initializer_range",
    "vocab_size": "vocab_size",
    "num_experts": "num_experts",
    "moe_ffn_hidden_size": "moe_intermediate_size",
    "moe_router_topk": "num_experts_per_tok",
    "moe_router_pre_softmax": "norm_topk_prob",
    "moe_aux_loss_coeff": "router_aux_loss_coef",
}
# Megatron values that are the negation of their HF field.
HF_NEGATED_FIELDS = {"untie_embeddings_and_output_weights", "moe_router_pre_softmax"}


def read_hf_config(model_dir: str | os.PathLike) -> tuple[dict, Path]:
    """config.json of an HF model directory, and its path (for messages)."""
    path = Path(model_dir) / "config.json"
    try:
        return json.loads(path.read_text()), path
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: cannot read the model config ({err})") from None


def family_of(config: dict, path: str | os.PathLike) -> tuple[str, str]:
    """(family, architecture) of a config.json; anything unsupported is a UserError."""
    archs = config.get("architectures") or []
    if len(archs) != 1 or family_for_architecture(archs[0]) is None:
        raise UserError(
            f"{path}: architecture {archs or 'missing'} is not supported; "
            f"supported: {', '.join(supported_architectures())}"
        )
    return family_for_architecture(archs[0]).name, archs[0]


def megatron_args_from_hf_config(config: dict, path: str | os.PathLike) -> dict[str, Any]:
    """Megatron flag values (argparse dest names) describing the model of this config.json.

    Also returns `family`, `hf_architecture` and `vocab_size` (the checkpoint's, which is the
    padded vocabulary). `path` only names the file in error messages.
    """
    family, arch = family_of(config, path)
    if FAMILIES[family].hybrid:
        from megatron_sft.models.hf_hybrid import hybrid_args_from_hf_config

        return hybrid_args_from_hf_config(config, family, arch, path)
    cfg = {**FAMILIES[family].hf_defaults, **{k: v for k, v in config.items() if v is not None}}
    if "num_local_experts" in config:  # how transformers 5 saves Qwen3-MoE's num_experts
        cfg["num_experts"] = config["num_local_experts"]
    missing = [k for k in _REQUIRED if k not in cfg]
    if missing:
        raise UserError(f"{path}: missing {', '.join(missing)}; not a complete {arch} config")
    _refuse_unsupported(cfg, family, path)
    heads = cfg["num_attention_heads"]
    kv_heads = cfg["num_key_value_heads"] or heads
    out: dict[str, Any] = {
        "family": family,
        "hf_architecture": arch,
        "vocab_size": cfg["vocab_size"],
        "num_layers": cfg["num_hidden_layers"],
        "hidden_size": cfg["hidden_size"],
        "ffn_hidden_size": cfg["intermediate_size"],
        "num_attention_heads": heads,
        "group_query_attention": kv_heads != heads,
        "num_query_groups": kv_heads,
        "kv_channels": cfg["head_dim"] or cfg["hidden_size"] // heads,
        "max_position_embeddings": cfg["max_position_embeddings"],
        "position_embedding_type": "rope",
        "normalization": "RMSNorm",
        "norm_epsilon": cfg["rms_norm_eps"],
        "swiglu": True,
        "add_bias_linear": False,
        # Qwen2 hard-codes q/k/v biases; the others would need an o_proj bias too (refused above).
        "add_qkv_bias": FAMILIES[family].qkv_bias,
        "qk_layernorm": FAMILIES[family].qk_layernorm,
        "untie_embeddings_and_output_weights": not cfg["tie_word_embeddings"],
        "attention_dropout": float(cfg["attention_dropout"]),
        "hidden_dropout": 0.0,  # these HF models have no residual dropout
        "init_method_std": cfg["initializer_range"],
        "num_experts": None,
    }
    out.update(_rope_args(cfg, path))
    if FAMILIES[family].moe:
        out.update(_moe_args(cfg))
    return out


def _refuse_unsupported(cfg: dict, family: str, path: str | os.PathLike) -> None:
    """Features these families allow but the Megatron-Core model built here cannot reproduce."""
    if cfg["hidden_act"] != "silu":
        raise UserError(f"{path}: hidden_act={cfg['hidden_act']!r} is not supported (SwiGLU needs 'silu')")
    if not FAMILIES[family].qkv_bias and cfg["attention_bias"]:
        raise UserError(
            f"{path}: attention_bias=true puts a bias on o_proj too, which Megatron's --add-qkv-bias "
            "does not cover; this checkpoint is not supported"
        )
    if cfg.get("mlp_bias"):
        raise UserError(f"{path}: mlp_bias=true is not supported (Megatron would need biases on every linear)")
    layer_types = set(cfg.get("layer_types") or ["full_attention"])
    if cfg["use_sliding_window"] or layer_types != {"full_attention"}:
        raise UserError(f"{path}: sliding-window attention is not supported (use_sliding_window / layer_types)")
    if FAMILIES[family].moe and (cfg["decoder_sparse_step"] != 1 or cfg["mlp_only_layers"]):
        raise UserError(
            f"{path}: decoder_sparse_step={cfg['decoder_sparse_step']}, mlp_only_layers={cfg['mlp_only_layers']}: "
            "dense layers between MoE layers are not supported (need decoder_sparse_step=1, mlp_only_layers=[])"
        )


def _rope_args(cfg: dict, path: str | os.PathLike) -> dict[str, Any]:
    """rope_theta and scaling, from transformers 4.x (rope_theta/rope_scaling) or 5.x (rope_parameters)."""
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if any(isinstance(v, dict) for v in params.values()):
        raise UserError(f"{path}: per-layer-type rope_parameters are not supported")
    theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    out: dict[str, Any] = {
        "rotary_base": int(theta) if float(theta).is_integer() else theta,
        "rotary_percent": float(params.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))),
        "use_rope_scaling": False,
    }
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return out
    if rope_type != "llama3":
        raise UserError(
            f"{path}: rope_type {rope_type!r} is not supported; Megatron-Core applies only 'llama3' scaling"
        )
    # transformers fills a missing original_max_position_embeddings from max_position_embeddings.
    found = {
        "original_max_position_embeddings": params.get(
            "original_max_position_embeddings",
            cfg.get("original_max_position_embeddings", cfg["max_position_embeddings"]),
        ),
        "low_freq_factor": params.get("low_freq_factor"),
        "high_freq_factor": params.get("high_freq_factor"),
    }
    wrong = {k: v for k, v in found.items() if v is None or float(v) != MCORE_LLAMA3_ROPE[k]}
    if wrong:
        have = ", ".join(f"{k}={v}" for k, v in wrong.items())
        need = ", ".join(f"{k}={MCORE_LLAMA3_ROPE[k]:g}" for k in wrong)
        raise UserError(f"{path}: llama3 rope scaling with {have} is not supported; Megatron-Core hard-codes {need}")
    if params.get("factor") is None:
        raise UserError(f"{path}: llama3 rope scaling without a factor")
    out.update(use_rope_scaling=True, rope_scaling_factor=float(params["factor"]))
    return out


def _moe_args(cfg: dict) -> dict[str, Any]:
    # HF: softmax over all experts, top-k, then renormalise if norm_topk_prob. Megatron's default
    # (top-k, then softmax over the k) equals renormalising; --moe-router-pre-softmax equals not.
    return {
        "num_experts": cfg["num_experts"],
        "moe_ffn_hidden_size": cfg["moe_intermediate_size"],
        "moe_router_topk": cfg["num_experts_per_tok"],
        "moe_router_pre_softmax": not cfg["norm_topk_prob"],
        "moe_aux_loss_coeff": float(cfg["router_aux_loss_coef"]),
        "moe_router_load_balancing_type": "aux_loss",
        "moe_router_score_function": "softmax",
    }
