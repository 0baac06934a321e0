"""config.json -> Megatron flag values, on the real configs of every supported model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from megatron_sft.errors import UserError
from megatron_sft.models.hf_config import megatron_args_from_hf_config
from megatron_sft.models.registry import family_for_architecture, supported_architectures

CONFIGS = json.loads((Path(__file__).parents[1] / "data" / "hf_model_configs.json").read_text())
CONFIGS.pop("_about")
PATH = "/models/x/config.json"
HYBRID = sorted(k for k, v in CONFIGS.items() if v["architectures"] == ["NemotronHForCausalLM"])


@pytest.mark.parametrize("name", sorted(set(CONFIGS) - set(HYBRID)))
def test_every_real_config_maps_field_by_field(name):
    cfg = CONFIGS[name]
    out = megatron_args_from_hf_config(cfg, PATH)
    assert out["num_layers"] == cfg["num_hidden_layers"]
    assert out["hidden_size"] == cfg["hidden_size"]
    assert out["ffn_hidden_size"] == cfg["intermediate_size"]
    assert out["num_attention_heads"] == cfg["num_attention_heads"]
    assert out["num_query_groups"] == cfg["num_key_value_heads"]
    assert out["group_query_attention"] is (cfg["num_key_value_heads"] != cfg["num_attention_heads"])
    assert out["kv_channels"] == cfg["head_dim"]
    assert out["max_position_embeddings"] == cfg["max_position_embeddings"]
    assert out["rotary_base"] == cfg["rope_theta"]
    assert out["norm_epsilon"] == cfg["rms_norm_eps"]
    assert out["untie_embeddings_and_output_weights"] is (not cfg["tie_word_embeddings"])
    assert out["vocab_size"] == cfg["vocab_size"]
    assert (out["normalization"], out["swiglu"], out["add_bias_linear"]) == ("RMSNorm", True, False)
    assert (out["position_embedding_type"], out["hidden_dropout"], out["attention_dropout"]) == ("rope", 0.0, 0.0)
    assert out["hf_architecture"] == cfg["architectures"][0]
    assert out["family"] == family_for_architecture(cfg["architectures"][0]).name


def test_qwen3_0_6b():
    out = megatron_args_from_hf_config(CONFIGS["Qwen/Qwen3-0.6B"], PATH)
    assert out["kv_channels"] == 128 and out["norm_epsilon"] == 1e-6
    assert out["untie_embeddings_and_output_weights"] is False
    assert out["qk_layernorm"] is True and out["add_qkv_bias"] is False
    assert out["num_experts"] is None and out["use_rope_scaling"] is False
    assert out["family"] == "qwen3"


def test_qwen2_5_has_qkv_bias_and_no_qk_norm():
    out = megatron_args_from_hf_config(CONFIGS["Qwen/Qwen2.5-0.5B-Instruct"], PATH)
    assert out["add_qkv_bias"] is True and out["qk_layernorm"] is False
    assert out["kv_channels"] == 64 and out["family"] == "qwen2"


def test_qwen3_moe():
    out = megatron_args_from_hf_config(CONFIGS["Qwen/Qwen3-30B-A3B"], PATH)
    assert out["num_experts"] == 128 and out["moe_ffn_hidden_size"] == 768 and out["moe_router_topk"] == 8
    assert out["moe_router_pre_softmax"] is False  # norm_topk_prob=true: Megatron's top-k-then-softmax
    assert out["moe_aux_loss_coeff"] == 0.001  # router_aux_loss_coef's class default
    assert out["moe_router_load_balancing_type"] == "aux_loss" and out["family"] == "qwen3_moe"
    cfg = {**CONFIGS["Qwen/Qwen3-30B-A3B"], "norm_topk_prob": False}
    assert megatron_args_from_hf_config(cfg, PATH)["moe_router_pre_softmax"] is True


def test_num_local_experts_as_transformers_5_saves_it():
    cfg = {k: v for k, v in CONFIGS["Qwen/Qwen3-30B-A3B"].items() if k != "num_experts"}
    assert megatron_args_from_hf_config({**cfg, "num_local_experts": 4}, PATH)["num_experts"] == 4


def test_llama_rope_scaling():
    out = megatron_args_from_hf_config(CONFIGS["meta-llama/Llama-3.1-8B-Instruct"], PATH)
    assert out["use_rope_scaling"] is True and out["rope_scaling_factor"] == 8.0
    assert out["untie_embeddings_and_output_weights"] is True and out["rotary_base"] == 500000
    small = megatron_args_from_hf_config(CONFIGS["meta-llama/Llama-3.2-1B-Instruct"], PATH)
    assert small["rope_scaling_factor"] == 32.0 and small["untie_embeddings_and_output_weights"] is False


def test_transformers_5_rope_parameters_layout():
    cfg = {
        k: v for k, v in CONFIGS["meta-llama/Llama-3.1-8B-Instruct"].items() if k not in ("rope_theta", "rope_scaling")
    }
    cfg["rope_parameters"] = {**CONFIGS["meta-llama/Llama-3.1-8B-Instruct"]["rope_scaling"], "rope_theta": 123456.0}
    out = megatron_args_from_hf_config(cfg, PATH)
    assert out["rotary_base"] == 123456 and out["use_rope_scaling"] is True and out["rope_scaling_factor"] == 8.0
    qwen = {k: v for k, v in CONFIGS["Qwen/Qwen3-0.6B"].items() if k != "rope_theta"}
    qwen["rope_parameters"] = {"rope_theta": 5e6, "rope_type": "default"}
    assert megatron_args_from_hf_config(qwen, PATH)["rotary_base"] == 5000000


def test_llama3_rope_values_megatron_hard_codes_otherwise_are_refused():
    cfg = json.loads(json.dumps(CONFIGS["meta-llama/Llama-3.1-8B-Instruct"]))
    cfg["rope_scaling"]["original_max_position_embeddings"] = 4096
    with pytest.raises(
        UserError,
        match=r"original_max_position_embeddings=4096.*/models/x/config.json|"
        r"/models/x/config.json.*original_max_position_embeddings=4096",
    ):
        megatron_args_from_hf_config(cfg, PATH)
    cfg["rope_scaling"].update(original_max_position_embeddings=8192, high_freq_factor=2.0)
    with pytest.raises(UserError, match="high_freq_factor=2.0"):
        megatron_args_from_hf_config(cfg, PATH)


@pytest.mark.parametrize("rope_type", ["yarn", "linear", "dynamic"])
def test_other_rope_types_are_refused(rope_type):
    cfg = {**CONFIGS["meta-llama/Llama-3.2-1B-Instruct"], "rope_scaling": {"rope_type": rope_type, "factor": 2.0}}
    with pytest.raises(UserError, match=rope_type):
        megatron_args_from_hf_config(cfg, PATH)


def test_unsupported_architecture_names_it_the_file_and_the_supported_list():
    cfg = {**CONFIGS["Qwen/Qwen3-0.6B"], "architectures": ["MistralForCausalLM"]}
    with pytest.raises(UserError) as err:
        megatron_args_from_hf_config(cfg, PATH)
    assert "MistralForCausalLM" in str(err.value) and PATH in str(err.value)
    assert all(arch in str(err.value) for arch in supported_architectures())


@pytest.mark.parametrize(
    "change, words",
    [
        ({"decoder_sparse_step": 2}, "decoder_sparse_step=2"),
        ({"mlp_only_layers": [0]}, "mlp_only_layers=[0]"),
    ],
)
def test_qwen3_moe_with_dense_layers_is_refused(change, words):
    with pytest.raises(UserError, match=words.replace("[", r"\[").replace("]", r"\]")):
        megatron_args_from_hf_config({**CONFIGS["Qwen/Qwen3-30B-A3B"], **change}, PATH)


@pytest.mark.parametrize("change", [{"attention_bias": True}, {"use_sliding_window": True}, {"hidden_act": "gelu"}])
def test_features_megatron_cannot_reproduce_are_refused(change):
    with pytest.raises(UserError, match=next(iter(change))):
        megatron_args_from_hf_config({**CONFIGS["Qwen/Qwen3-0.6B"], **change}, PATH)


def test_missing_size_field_is_named():
    cfg = {k: v for k, v in CONFIGS["Qwen/Qwen3-0.6B"].items() if k != "num_hidden_layers"}
    with pytest.raises(UserError, match="num_hidden_layers"):
        megatron_args_from_hf_config(cfg, PATH)


def test_omitted_fields_read_as_transformers_reads_them():
    """The defaults table must agree with transformers' own config classes (checked against the pin)."""
    import transformers

    minimal = {
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "vocab_size": 100,
    }
    for arch in supported_architectures():
        if arch == "NemotronHForCausalLM":
            continue  # test_omitted_hybrid_fields_read_as_transformers_reads_them
        hf = getattr(transformers, arch.replace("ForCausalLM", "Config"))(**minimal)
        out = megatron_args_from_hf_config({"architectures": [arch], **minimal}, PATH)
        head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
        assert out["kv_channels"] == head_dim, arch
        assert out["num_query_groups"] == (hf.num_key_value_heads or hf.num_attention_heads), arch
        assert out["untie_embeddings_and_output_weights"] is (not hf.tie_word_embeddings), arch
        assert out["norm_epsilon"] == hf.rms_norm_eps and out["init_method_std"] == hf.initializer_range, arch
        assert out["max_position_embeddings"] == hf.max_position_embeddings, arch
        assert out["rotary_base"] == hf.rope_parameters["rope_theta"], arch
        assert out["attention_dropout"] == hf.attention_dropout, arch
        if arch == "Qwen3MoeForCausalLM":
            assert out["num_experts"] == hf.num_experts and out["moe_router_topk"] == hf.num_experts_per_tok
            assert out["moe_ffn_hidden_size"] == hf.moe_intermediate_size
            assert out["moe_router_pre_softmax"] is (not hf.norm_topk_prob)
            assert out["moe_aux_loss_coeff"] == hf.router_aux_loss_coef


def test_omitted_hybrid_fields_read_as_transformers_reads_them():
    from transformers import NemotronHConfig

    minimal = {"hidden_size": 4096, "num_attention_heads": 32, "vocab_size": 100, "hybrid_override_pattern": "M*-E"}
    hf = NemotronHConfig(**minimal)
    out = megatron_args_from_hf_config({"architectures": ["NemotronHForCausalLM"], **minimal}, PATH)
    assert (out["kv_channels"], out["num_query_groups"]) == (hf.head_dim, hf.num_key_value_heads)
    assert (out["ffn_hidden_size"], out["norm_epsilon"]) == (hf.intermediate_size, hf.layer_norm_epsilon)
    assert (out["mamba_num_heads"], out["mamba_head_dim"], out["mamba_state_dim"], out["mamba_num_groups"]) == (
        hf.mamba_num_heads, hf.mamba_head_dim, hf.ssm_state_size, hf.n_groups)
    assert (out["mamba_chunk_size"], out["mamba_conv_kernel"]) == (hf.chunk_size, hf.conv_kernel)
    assert (out["num_experts"], out["moe_router_topk"], out["moe_ffn_hidden_size"]) == (
        hf.n_routed_experts, hf.num_experts_per_tok, hf.moe_intermediate_size)
    assert out["moe_shared_expert_intermediate_size"] == hf.moe_shared_expert_intermediate_size
    assert out["moe_router_topk_scaling_factor"] == hf.routed_scaling_factor
    assert out["max_position_embeddings"] == hf.max_position_embeddings
    assert out["untie_embeddings_and_output_weights"] is (not hf.tie_word_embeddings)
    assert out["init_method_std"] == hf.initializer_range


@pytest.mark.parametrize("name", HYBRID)
def test_every_real_hybrid_config_maps_field_by_field(name):
    cfg = CONFIGS[name]
    out = megatron_args_from_hf_config(cfg, PATH)
    pattern = cfg["hybrid_override_pattern"]
    assert (out["hybrid_override_pattern"], out["num_layers"]) == (pattern, cfg["num_hidden_layers"])
    assert out["hidden_size"] == cfg["hidden_size"] and out["ffn_hidden_size"] == cfg["intermediate_size"]
    assert (out["num_attention_heads"], out["num_query_groups"]) == (cfg["num_attention_heads"],
                                                                     cfg["num_key_value_heads"])
    assert out["kv_channels"] == cfg["head_dim"]
    assert (out["mamba_num_heads"], out["mamba_head_dim"], out["mamba_state_dim"], out["mamba_num_groups"]) == (
        cfg["mamba_num_heads"], cfg["mamba_head_dim"], cfg["ssm_state_size"], cfg["n_groups"])
    assert (out["mamba_chunk_size"], out["mamba_conv_kernel"]) == (cfg.get("chunk_size", 128),
                                                                   cfg.get("conv_kernel", 4))
    assert (out["position_embedding_type"], out["swiglu"], out["squared_relu"]) == ("none", False, True)
    assert out["norm_epsilon"] == cfg.get("layer_norm_epsilon", 1e-5)
    assert out["untie_embeddings_and_output_weights"] is True and out["vocab_size"] == cfg["vocab_size"]
    if "E" in pattern:
        assert (out["num_experts"], out["moe_router_topk"], out["moe_ffn_hidden_size"]) == (
            cfg["n_routed_experts"], cfg["num_experts_per_tok"], cfg["moe_intermediate_size"])
        assert out["moe_shared_expert_intermediate_size"] == cfg["moe_shared_expert_intermediate_size"]
        assert out["moe_router_topk_scaling_factor"] == cfg["routed_scaling_factor"]
        assert (out["moe_router_score_function"], out["moe_router_enable_expert_bias"]) == ("sigmoid", True)
    else:
        assert out["num_experts"] is None
    assert out["family"] == "nemotron_h"


def test_hybrid_layer_types_as_transformers_5_saves_them():
    """layers_block_type (with the legacy names of older files) wins over hybrid_override_pattern."""
    cfg = {**CONFIGS[HYBRID[0]], "layers_block_type": ["mamba", "attention", "mlp", "moe", "linear_attention",
                                                       "full_attention"], "hybrid_override_pattern": "MMMMMM"}
    assert megatron_args_from_hf_config(cfg, PATH)["hybrid_override_pattern"] == "M*-EM*"


@pytest.mark.parametrize("change,needle", [
    ({"tie_word_embeddings": True}, "tie_word_embeddings"),
    ({"time_step_limit": [0.0, 0.1]}, "time_step_limit"),
    ({"num_nextn_predict_layers": 1}, "num_nextn_predict_layers=1"),
    ({"moe_latent_size": 1024}, "moe_latent_size=1024"),
    ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon"),
    ({"mlp_hidden_act": "silu"}, "mlp_hidden_act"),
    ({"n_group": 2}, "n_group=2"),
    ({"norm_topk_prob": False}, "norm_topk_prob"),
    ({"hybrid_override_pattern": "MEMX"}, "symbols ['X']"),
])
def test_hybrid_configs_megatron_would_compute_otherwise_are_refused(change, needle):
    cfg = {**CONFIGS["nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B"], **change}
    with pytest.raises(UserError, match=re.escape(needle)):
        megatron_args_from_hf_config(cfg, PATH)


def test_transformers_infinity_in_time_step_limit_is_read():
    cfg = {**CONFIGS[HYBRID[0]], "time_step_limit": [0.0, {"__float__": "Infinity"}]}
    assert megatron_args_from_hf_config(cfg, PATH)["mamba_num_heads"] == cfg["mamba_num_heads"]
