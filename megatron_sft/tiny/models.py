"""Tiny, randomly initialised Hugging Face checkpoints of the supported families, for tests.

Shapes are tiny but every architectural quirk of the real family is kept (explicit head_dim, tied or
untied embeddings, qkv bias, llama3 rope scaling, MoE routing) so conversion bugs show up.
"""

from __future__ import annotations

import os
import pathlib

import torch
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    NemotronHConfig,
    NemotronHForCausalLM,
    PreTrainedConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

from megatron_sft.tiny.tokenizer import FAMILIES, check_family, make_tiny_tokenizer

_COMMON = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    max_position_embeddings=2048,
    rms_norm_eps=1e-6,
    attention_dropout=0.0,
    initializer_range=0.02,
    hidden_act="silu",
    dtype="float32",
)

_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

# End-of-turn token first: generation must stop there; the document-end token is the fallback.
_STOP_TOKENS = {"qwen": ("<|im_end|>", "<|endoftext|>"), "llama3": ("<|eot_id|>", "<|end_of_text|>")}


def _qwen3_kwargs(tied: bool) -> dict:
    return dict(head_dim=16, tie_word_embeddings=tied, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                attention_bias=False)


def _build_config(family: str, token_ids: dict) -> PreTrainedConfig:
    kw = {**_COMMON, **token_ids}
    if family in ("qwen3", "qwen3_untied"):
        return Qwen3Config(**kw, **_qwen3_kwargs(tied=family == "qwen3"))
    if family == "qwen3_moe":
        return Qwen3MoeConfig(
            **kw, **_qwen3_kwargs(tied=False), num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
            norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], router_aux_loss_coef=0.001,
        )
    if family == "qwen2":
        # Qwen2.5 configs carry no head_dim key (it is hidden/heads = 8) and always have qkv bias.
        return Qwen2Config(
            **kw, tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
            use_sliding_window=False, max_window_layers=_COMMON["num_hidden_layers"],
        )
    if family.startswith("nemotron_h"):
        return _nemotron_h_config(family, token_ids)
    kw["rms_norm_eps"] = 1e-5
    return LlamaConfig(
        **kw, head_dim=8, tie_word_embeddings=True, rope_parameters=dict(_LLAMA3_ROPE), attention_bias=False,
        mlp_bias=False,
    )


# Nemotron-H: a Mamba-2 layer on each side of attention, MLP or MoE (PP=2 puts one of each kind per stage); 8 heads
# in 2 groups (TP=2 holds one group each), and a scan chunk of 16 that the tests' samples cross mid-chunk.
TINY_HYBRID_PATTERNS = {"nemotron_h": "M*M-", "nemotron_h_moe": "M*ME"}


def _nemotron_h_config(family: str, token_ids: dict) -> PreTrainedConfig:
    return NemotronHConfig(
        vocab_size=_COMMON["vocab_size"], hidden_size=64, hybrid_override_pattern=TINY_HYBRID_PATTERNS[family],
        num_attention_heads=8, num_key_value_heads=4, head_dim=16, intermediate_size=128, mamba_num_heads=8,
        mamba_head_dim=16, ssm_state_size=16, n_groups=2, conv_kernel=4, chunk_size=16, n_routed_experts=4,
        num_experts_per_tok=2, moe_intermediate_size=32, moe_shared_expert_intermediate_size=48,
        max_position_embeddings=2048, layer_norm_epsilon=1e-5, use_mamba_kernels=False, tie_word_embeddings=False,
        dtype="float32", **token_ids,
    )


_MODEL_CLASSES = {
    "qwen3": Qwen3ForCausalLM,
    "qwen3_untied": Qwen3ForCausalLM,
    "qwen3_moe": Qwen3MoeForCausalLM,
    "qwen2": Qwen2ForCausalLM,
    "llama3": LlamaForCausalLM,
    "nemotron_h": NemotronHForCausalLM,
    "nemotron_h_moe": NemotronHForCausalLM,
}


@torch.no_grad()
def _perturb(model: torch.nn.Module) -> None:
    """Norm weights of exactly 1 and zero biases would hide a dropped norm or bias in conversion tests."""
    for module in model.modules():
        if type(module).__name__.endswith(("RMSNorm", "RMSNormGated")):
            module.weight.copy_(1.0 + 0.1 * torch.randn_like(module.weight))
    for name, param in model.named_parameters():
        if name.endswith(".bias"):
            param.copy_(0.02 * torch.randn_like(param))
    for name, buffer in model.named_buffers():  # NemotronH's expert-choice bias: zero would hide a lost one
        if name.endswith("e_score_correction_bias"):
            buffer.copy_(0.1 * torch.randn_like(buffer))


def _token_ids(tokenizer) -> dict:
    return dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )


def make_tiny_model(family: str, out_dir: str | os.PathLike, seed: int = 0, **config_overrides) -> pathlib.Path:
    """Write a tiny HF checkpoint (fp32 safetensors, configs, tokenizer with chat template) to out_dir.

    `config_overrides` replace config fields (e.g. head_dim=32, intermediate_size=256: input sizes that
    hold whole 128-wide INT4 blocks at TP 2)."""
    check_family(family)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tiny_tokenizer(family)
    ids = _token_ids(tokenizer)
    config = _build_config(family, ids)
    for key, value in config_overrides.items():
        setattr(config, key, value)
    with torch.random.fork_rng(devices=[]):  # seed locally: callers' RNG streams stay untouched
        torch.manual_seed(seed)
        model = _MODEL_CLASSES[family](config).to(torch.float32).eval()
        _perturb(model)
    stops = _STOP_TOKENS["llama3" if family == "llama3" else "qwen"]
    model.generation_config = GenerationConfig(
        bos_token_id=ids["bos_token_id"],
        eos_token_id=[tokenizer.convert_tokens_to_ids(t) for t in stops],
        pad_token_id=ids["pad_token_id"],
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


__all__ = ["FAMILIES", "make_tiny_model"]
