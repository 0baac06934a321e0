"""Every shipped conf/<org>/<model>.sh, planned by finetune.sh's launcher against the model's real config.json
(tests/data/hf_model_configs.json): the right architecture reaches Megatron-Core's TransformerConfig, and the
conf's default layout passes the entry script's own validation.

The confs name no architecture flag: what reaches Megatron comes from config.json alone. The expected values
below are written from the Hugging Face field names, independently of megatron_sft.models.hf_config.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_sft.launch.conf import conf_models, read_conf
from megatron_sft.launch.main import plan_launch
from tests.workflow.helpers import FACTS

FACT_MODELS = {k: v for k, v in json.loads(FACTS.read_text()).items() if not k.startswith("_")}
EMBEDDED = "tiny"
EMBEDDED_MODELS = ("tiny", "tiny_hybrid")
ARCHITECTURE_FLAGS = ("--num-layers", "--hidden-size", "--num-attention-heads", "--num-query-groups",
                      "--ffn-hidden-size", "--kv-channels", "--num-experts", "--make-vocab-size-divisible-by")


def test_every_supported_model_has_a_conf_and_nothing_else_does():
    assert sorted(conf_models()) == sorted([*FACT_MODELS, *EMBEDDED_MODELS])


@pytest.mark.parametrize("model", sorted([*FACT_MODELS, *EMBEDDED_MODELS]))
def test_confs_leave_the_architecture_to_config_json(model):
    conf = read_conf(model, "/w")
    flags = [*conf.model_args, *conf.train_args]
    assert not [f for f in flags if f in ARCHITECTURE_FLAGS], f"{model}: architecture restated in its conf"


def _fake_hf_dir(fact: dict, root: Path) -> Path:
    """config.json from the recorded fields, and an empty weights file (only the config is read)."""
    root.mkdir(parents=True)
    config = {k: v for k, v in fact.items() if k not in ("qkv_bias", "_source")}
    (root / "config.json").write_text(json.dumps(config))
    (root / "model.safetensors").write_bytes(b"")
    return root


def _planned_args(model: str, hf_dir: Path, tmp_path: Path):
    """finetune.sh MODEL's command at the conf's default layout, parsed as finetune.py parses it."""
    from megatron_sft.arguments import parse_args

    data = tmp_path / "chat.jsonl"
    data.write_text("{}\n")
    env = {"MLM_WORK_DIR": str(tmp_path / "work"), "HF_MODEL_CKPT": str(hf_dir), "DATASET": str(data)}
    settings, plan = plan_launch("finetune", model, env)  # raises the entry's own errors for a bad layout
    return settings, plan, parse_args(plan.flags, world_size=plan.layout.nproc)


def expected_hybrid_config(fact: dict) -> dict:
    """TransformerConfig fields a NemotronH config.json implies (NemotronHConfig's defaults where it is silent)."""
    pattern = fact["hybrid_override_pattern"]
    out = {
        "num_layers": len(pattern), "hidden_size": fact["hidden_size"], "is_hybrid_model": True,
        "num_attention_heads": fact["num_attention_heads"], "num_query_groups": fact["num_key_value_heads"],
        "kv_channels": fact["head_dim"], "layernorm_epsilon": fact.get("layer_norm_epsilon", 1e-5),
        "gated_linear_unit": False, "add_bias_linear": False, "qk_layernorm": False,
        "mamba_num_heads": fact["mamba_num_heads"], "mamba_head_dim": fact["mamba_head_dim"],
        "mamba_state_dim": fact["ssm_state_size"], "mamba_num_groups": fact["n_groups"],
    }
    if "E" in pattern:
        out.update(num_moe_experts=fact["n_routed_experts"], moe_ffn_hidden_size=fact["moe_intermediate_size"],
                   moe_router_topk=fact["num_experts_per_tok"], moe_router_score_function="sigmoid",
                   moe_router_enable_expert_bias=True,
                   moe_router_topk_scaling_factor=fact["routed_scaling_factor"],
                   moe_shared_expert_intermediate_size=fact["moe_shared_expert_intermediate_size"])
    else:
        out.update(num_moe_experts=None, ffn_hidden_size=fact["intermediate_size"])
    return out


def expected_config(fact: dict) -> dict:
    """TransformerConfig fields a config.json implies."""
    if fact["architectures"] == ["NemotronHForCausalLM"]:
        return expected_hybrid_config(fact)
    heads = fact["num_attention_heads"]
    out = {
        "num_layers": fact["num_hidden_layers"],
        "hidden_size": fact["hidden_size"],
        "num_attention_heads": heads,
        "num_query_groups": fact["num_key_value_heads"],
        "kv_channels": fact.get("head_dim", fact["hidden_size"] // heads),
        "layernorm_epsilon": fact["rms_norm_eps"],
        "normalization": "RMSNorm",
        "gated_linear_unit": True,
        "add_bias_linear": False,
        "add_qkv_bias": fact["architectures"][0] == "Qwen2ForCausalLM",
        "qk_layernorm": fact["architectures"][0].startswith("Qwen3"),
    }
    if "num_experts" in fact:
        out.update(num_moe_experts=fact["num_experts"], moe_ffn_hidden_size=fact["moe_intermediate_size"],
                   moe_router_topk=fact["num_experts_per_tok"])
    else:
        out.update(num_moe_experts=None, ffn_hidden_size=fact["intermediate_size"])
    return out


@pytest.mark.parametrize("model", sorted(FACT_MODELS))
def test_the_right_architecture_reaches_megatron(model, tmp_path):
    from megatron_sft.to_mcore import transformer_config

    fact = FACT_MODELS[model]
    _, plan, args = _planned_args(model, _fake_hf_dir(fact, tmp_path / "hf"), tmp_path)
    config = transformer_config(args)
    for field, want in expected_config(fact).items():
        assert getattr(config, field) == want, f"{model}: TransformerConfig.{field}"
    assert config.tensor_model_parallel_size * plan.layout.pp * plan.layout.cp * plan.layout.dp == plan.layout.nproc
    assert args.padded_vocab_size == fact["vocab_size"], "the checkpoint's vocabulary, unpadded"
    if fact["architectures"] == ["NemotronHForCausalLM"]:  # no positional encoding, rope_theta or not
        assert args.position_embedding_type == "none" and args.hybrid_override_pattern == fact[
            "hybrid_override_pattern"]
    else:
        assert args.rotary_base == fact["rope_theta"]
    assert args.untie_embeddings_and_output_weights == (not fact["tie_word_embeddings"])
    assert args.max_position_embeddings == fact["max_position_embeddings"]
    assert args.seq_length <= fact["max_position_embeddings"]
    assert not [n for n in args.notices if "overrides" in n], args.notices


def test_the_conf_layout_is_what_launches(tmp_path):
    """Qwen3-30B-A3B's conf asks TP=1 PP=2 DP=8 EP=8 ETP=1: 16 processes, and the flags say so."""
    model = "Qwen/Qwen3-30B-A3B"
    settings, plan, args = _planned_args(model, _fake_hf_dir(FACT_MODELS[model], tmp_path / "hf"), tmp_path)
    assert plan.layout.nproc == 16 and args.data_parallel_size == 8
    assert (args.expert_model_parallel_size, args.expert_tensor_parallel_size) == (8, 1)
    assert args.moe_token_dispatcher_type == "alltoall" and args.recompute_granularity == "full"
    assert any(line.startswith("layout") and "(TP: conf, PP: conf, DP: conf, EP: conf, ETP: conf)" in line
               for line in settings.lines), settings.lines


def test_a_layout_the_model_cannot_take_is_refused(tmp_path, monkeypatch):
    """The validation above can fail: TP=3 does not divide Qwen3-0.6B's 16 heads, named with config.json."""
    from megatron_sft.errors import ConfigErrors

    model = "Qwen/Qwen3-0.6B"
    hf_dir = _fake_hf_dir(FACT_MODELS[model], tmp_path / "hf")
    env = {"MLM_WORK_DIR": str(tmp_path), "HF_MODEL_CKPT": str(hf_dir), "DATASET": str(hf_dir / "config.json"),
           "TP": "3"}
    with pytest.raises(ConfigErrors, match=r"--tensor-model-parallel-size 3 must divide --num-attention-heads 16 "
                                           r"\(from .*config.json\)"):
        plan_launch("finetune", model, env)


@pytest.mark.parametrize("model", EMBEDDED_MODELS)
def test_tiny_conf_points_at_the_embedded_default(model):
    defaults = read_conf(model, work_dir="/w").defaults
    assert defaults["CONF_HF_MODEL_CKPT"] == f"/w/{model}/hf"
    assert defaults["CONF_DATASET"] == f"/w/{model}/train.jsonl"


def test_a_conf_sees_the_users_environment(tmp_path, monkeypatch):
    """Confs are sourced by bash in the user's environment (e.g. $HOME), as when the scripts sourced them."""
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "m.sh").write_text('CONF_HF_MODEL_CKPT="$HOME/models/m"\nMODEL_ARGS=(--seq-length 64)\n')
    monkeypatch.setenv("HOME", "/home/someone")
    monkeypatch.setenv("CONF_TP", "8")  # a stray variable of the user's shell is not the conf's
    conf = read_conf("org/m", "/w", conf_dir=tmp_path)
    assert conf.defaults == {"CONF_HF_MODEL_CKPT": "/home/someone/models/m"}
    assert conf.model_args == ["--seq-length", "64"]


@pytest.mark.parametrize("where", ["command_line", "MLM_EXTRA_ARGS"])
def test_a_run_length_given_replaces_the_default_one(tmp_path, where):
    """--train-iters after MODEL (or in MLM_EXTRA_ARGS) is the run length: the default --train-samples and its
    decay/warmup in samples go, instead of a refusal of two run lengths."""
    model = "Qwen/Qwen3-0.6B"
    hf_dir = _fake_hf_dir(FACT_MODELS[model], tmp_path / "hf")
    env = {"MLM_WORK_DIR": str(tmp_path), "HF_MODEL_CKPT": str(hf_dir), "DATASET": str(hf_dir / "config.json")}
    flags = ["--train-iters", "7", "--lr-warmup-iters", "1"]
    if where == "MLM_EXTRA_ARGS":
        env["MLM_EXTRA_ARGS"] = " ".join(flags)
    settings, plan = plan_launch("finetune", model, env, extra=flags if where == "command_line" else None)
    assert "--train-samples" not in plan.flags and "--lr-decay-samples" not in plan.flags
    assert plan.flags[plan.flags.index("--train-iters") + 1] == "7"
    assert any("the run length given replaces MLM_DATA_ARGS's" in line for line in settings.lines)


def test_two_run_lengths_the_user_gave_are_still_refused(tmp_path):
    from megatron_sft.errors import ConfigErrors

    model = "Qwen/Qwen3-0.6B"
    hf_dir = _fake_hf_dir(FACT_MODELS[model], tmp_path / "hf")
    env = {"MLM_WORK_DIR": str(tmp_path), "HF_MODEL_CKPT": str(hf_dir), "DATASET": str(hf_dir / "config.json"),
           "MLM_DATA_ARGS": "--train-samples 64"}
    with pytest.raises(ConfigErrors, match="not --train-iters and --train-samples"):
        plan_launch("finetune", model, env, extra=["--train-iters", "7"])
