"""Every shipped conf/<org>/<model>.sh against the model's real config.json (tests/data/hf_model_configs.json).

Two independent checks: the explicit flag values equal the config fields, and the project's own argument
resolver accepts the conf's flags and default layout against a config.json written from those fields
(a contradicting flag, a TP that does not divide the heads or the vocabulary, an EP that does not fit:
each would be an error).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.workflow.helpers import FACTS, conf_models, flag_values, read_conf

FACT_MODELS = {k: v for k, v in json.loads(FACTS.read_text()).items() if not k.startswith("_")}
EMBEDDED = "tiny"


def test_every_supported_model_has_a_conf_and_nothing_else_does():
    assert sorted(conf_models()) == sorted([*FACT_MODELS, EMBEDDED])


def expected_flags(fact: dict) -> dict[str, str | bool | None]:
    """The Megatron flags a config.json implies (None: the flag must be absent)."""
    arch = fact["architectures"][0]
    out: dict[str, str | bool | None] = {
        "--num-layers": str(fact["num_hidden_layers"]),
        "--hidden-size": str(fact["hidden_size"]),
        "--ffn-hidden-size": str(fact["intermediate_size"]),
        "--num-attention-heads": str(fact["num_attention_heads"]),
        "--num-query-groups": str(fact["num_key_value_heads"]),
        "--group-query-attention": True if fact["num_key_value_heads"] != fact["num_attention_heads"] else None,
        "--kv-channels": str(fact["head_dim"]),
        "--max-position-embeddings": str(fact["max_position_embeddings"]),
        "--rotary-base": str(fact["rope_theta"]),
        "--norm-epsilon": float(fact["rms_norm_eps"]),
        "--normalization": "RMSNorm",
        "--position-embedding-type": "rope",
        "--swiglu": True,
        "--disable-bias-linear": True,
        "--untie-embeddings-and-output-weights": None if fact["tie_word_embeddings"] else True,
        "--qk-layernorm": True if arch.startswith("Qwen3") else None,
        "--add-qkv-bias": True if arch == "Qwen2ForCausalLM" else None,
        "--use-rope-scaling": True if "rope_scaling" in fact else None,
    }
    if "rope_scaling" in fact:
        out["--rope-scaling-factor"] = float(fact["rope_scaling"]["factor"])
    if "num_experts" in fact:
        out.update(
            {
                "--num-experts": str(fact["num_experts"]),
                "--moe-ffn-hidden-size": str(fact["moe_intermediate_size"]),
                "--moe-router-topk": str(fact["num_experts_per_tok"]),
                "--moe-router-pre-softmax": None if fact["norm_topk_prob"] else True,
            }
        )
    else:
        out["--num-experts"] = None
    return out


@pytest.mark.parametrize("model", sorted(FACT_MODELS))
def test_conf_flags_match_the_model_config(model):
    fact, conf = FACT_MODELS[model], read_conf(model)
    flags = flag_values(conf["model_args"])
    for flag, want in expected_flags(fact).items():
        have = flags.get(flag)
        if isinstance(want, float):
            assert have is not None and float(have) == want, f"{model}: {flag} {have}, config.json says {want}"
        else:
            assert have == want, f"{model}: {flag} is {have!r}, config.json implies {want!r}"
    seq = int(flags["--seq-length"])
    assert seq <= fact["max_position_embeddings"]


def _fake_hf_dir(fact: dict, root: Path) -> Path:
    """config.json from the recorded fields, and an empty weights file (only the config is read)."""
    root.mkdir(parents=True)
    config = {k: v for k, v in fact.items() if k != "qkv_bias"}
    (root / "config.json").write_text(json.dumps(config))
    (root / "model.safetensors").write_bytes(b"")
    return root


@pytest.mark.parametrize("model", sorted(FACT_MODELS))
def test_conf_and_its_default_layout_pass_the_argument_resolver(model, tmp_path):
    from megatron_sft.arguments import parse_args

    fact, conf = FACT_MODELS[model], read_conf(model)
    d = conf["defaults"]
    tp, pp, cp, ep = (int(d.get(f"CONF_{k}", 1)) for k in ("TP", "PP", "CP", "EP"))
    dp, etp = int(d.get("CONF_DP", 1)), int(d.get("CONF_ETP", tp))
    world = tp * pp * cp * dp
    assert (tp * cp * dp) % (ep * etp) == 0, f"{model}: EP x ETP must divide TP x CP x DP"
    hf_dir = _fake_hf_dir(fact, tmp_path / "hf")
    argv = [
        *conf["model_args"],
        *conf["train_args"],
        "--load",
        str(hf_dir),
        "--tensor-model-parallel-size",
        str(tp),
        "--pipeline-model-parallel-size",
        str(pp),
        "--context-parallel-size",
        str(cp),
        "--expert-model-parallel-size",
        str(ep),
        "--expert-tensor-parallel-size",
        str(etp),
        "--train-iters",
        "10",
        "--lr",
        "1e-5",
    ]
    args = parse_args(argv, world_size=world)  # raises ConfigErrors listing every contradiction
    assert args.data_parallel_size == dp
    assert args.padded_vocab_size == fact["vocab_size"]
    assert not [n for n in args.notices if "overrides" in n], args.notices
    multiple = int(flag_values(conf["model_args"])["--make-vocab-size-divisible-by"])
    assert fact["vocab_size"] % (multiple * tp) == 0


def test_a_contradicting_conf_flag_would_be_caught(tmp_path):
    """The resolver check above can fail: one wrong value in a conf is an error naming config.json."""
    from megatron_sft.arguments import parse_args
    from megatron_sft.errors import ConfigErrors

    model = "Qwen/Qwen3-0.6B"
    args = read_conf(model)["model_args"]
    wrong = [("40" if a == "28" else a) for a in args]  # --num-layers 40
    hf_dir = _fake_hf_dir(FACT_MODELS[model], tmp_path / "hf")
    with pytest.raises(ConfigErrors, match="num_hidden_layers=28"):
        parse_args([*wrong, "--load", str(hf_dir)], world_size=1)


def test_tiny_conf_matches_the_embedded_default_model():
    from megatron_sft.tiny.charlevel import TINY_CHAR_CONFIG as c

    flags = flag_values(read_conf(EMBEDDED, work_dir="/w")["model_args"])
    assert flags["--num-layers"] == str(c["num_hidden_layers"])
    assert flags["--hidden-size"] == str(c["hidden_size"])
    assert flags["--ffn-hidden-size"] == str(c["intermediate_size"])
    assert flags["--num-attention-heads"] == str(c["num_attention_heads"])
    assert flags["--num-query-groups"] == str(c["num_key_value_heads"])
    assert flags["--kv-channels"] == str(c["head_dim"])
    assert flags["--max-position-embeddings"] == str(c["max_position_embeddings"])
    assert flags["--rotary-base"] == str(c["rope_theta"])
    assert ("--untie-embeddings-and-output-weights" in flags) == (not c["tie_word_embeddings"])
    defaults = read_conf(EMBEDDED, work_dir="/w")["defaults"]
    assert defaults["CONF_HF_MODEL_CKPT"] == "/w/tiny/hf"
    assert defaults["CONF_DATASET"] == "/w/tiny/train.jsonl"
