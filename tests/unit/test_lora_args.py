"""LoRA flags: defaults, what a LoRA checkpoint or a PEFT adapter folder sets, and each bad input as one line."""

from __future__ import annotations

import json
from pathlib import Path

from megatron_sft.arguments import parse_args
from tests.unit.test_arguments import CONFIGS, hf_dir, megatron_dir, problems

RECORD = {"num_layers": 4, "hidden_size": 64, "num_attention_heads": 4, "norm_epsilon": 1e-6,
          "normalization": "RMSNorm", "padded_vocab_size": 1000}


def lora_checkpoint(tmp_path: Path, rank: int = 8) -> Path:
    root = megatron_dir(tmp_path, RECORD)
    lora = {"rank": rank, "alpha": 16.0, "dropout": 0.0, "targets": ["linear_qkv", "linear_proj"],
            "base": {"path": "/models/base", "format": "hf", "sha256": "0" * 64}}
    (root / "iter_0000100" / "lora.json").write_text(json.dumps(lora))
    return root


def adapter_folder(tmp_path: Path, **config) -> Path:
    path = tmp_path / "adapter"
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
                                                          "target_modules": ["q_proj", "k_proj", "v_proj"], **config}))
    return path


def test_defaults_are_the_recipes(tmp_path):
    args = parse_args(["--load", str(hf_dir(tmp_path)), "--peft", "lora"])
    assert (args.peft, args.lora_rank, args.lora_alpha, args.lora_dropout) == ("lora", 16, 32.0, 0.0)
    assert args.lora_target_modules == ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]
    assert parse_args(["--load", str(hf_dir(tmp_path, name="hf2"))]).peft is None


def test_a_lora_checkpoint_turns_lora_on_with_its_settings(tmp_path):
    args = parse_args(["--load", str(lora_checkpoint(tmp_path))])
    assert (args.peft, args.lora_rank, args.lora_alpha) == ("lora", 8, 16.0)
    assert args.lora_target_modules == ["linear_qkv", "linear_proj"]


def test_flags_contradicting_the_lora_checkpoint(tmp_path):
    root = lora_checkpoint(tmp_path)
    [problem] = problems(["--load", str(root), "--lora-rank", "16"])
    assert "--lora-rank 16" in problem and "has 8" in problem and str(root) in problem
    [problem] = problems(["--load", str(root), "--peft", "none"])
    assert "LoRA checkpoint" in problem and "--merge-lora" in problem


def test_lora_load_sets_rank_alpha_and_targets_from_the_adapter(tmp_path):
    adapter = adapter_folder(tmp_path, target_modules=["q_proj", "k_proj", "v_proj", "down_proj"])
    args = parse_args(["--load", str(hf_dir(tmp_path)), "--peft", "lora", "--lora-load", str(adapter)])
    assert (args.lora_rank, args.lora_alpha, args.lora_target_modules) == (4, 8.0, ["linear_qkv", "linear_fc2"])


def test_bad_lora_inputs_each_give_one_line(tmp_path):
    hf = str(hf_dir(tmp_path))
    found = problems(["--peft", "lora", "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4"])
    assert found == ["--peft lora trains adapters on a model: give it with --load (a Hugging Face directory or a "
                     "Megatron checkpoint)"]
    cases = {
        ("--load", hf, "--peft", "lora", "--lora-rank", "0"): "--lora-rank 0 must be at least 1",
        ("--load", hf, "--peft", "lora", "--lora-dropout", "1.5"): "--lora-dropout 1.5 must be in [0, 1)",
        ("--load", hf, "--peft", "lora", "--lora-load", str(tmp_path / "none")): "no adapter_config.json",
        ("--load", hf, "--lora-load", str(adapter_folder(tmp_path))): "--lora-load needs --peft lora",
    }
    for argv, message in cases.items():
        found = problems(list(argv))
        assert len(found) == 1 and message in found[0], (argv, found)
        assert "\n" not in found[0]


def test_adapter_on_unknown_modules_is_refused(tmp_path):
    adapter = adapter_folder(tmp_path, target_modules=["lm_head"])
    [problem] = problems(["--load", str(hf_dir(tmp_path)), "--peft", "lora", "--lora-load", str(adapter)])
    assert "lm_head" in problem and "adapter_config.json" in problem


def test_dropout_on_moe_experts_is_refused(tmp_path):
    moe = hf_dir(tmp_path, CONFIGS["Qwen/Qwen3-30B-A3B"])
    [problem] = problems(["--load", str(moe), "--peft", "lora", "--lora-dropout", "0.1"])
    assert "target_parameters" in problem and "--lora-dropout 0" in problem
    args = parse_args(["--load", str(moe), "--peft", "lora", "--lora-dropout", "0.1", "--lora-target-modules",
                       "linear_qkv", "linear_proj"])
    assert args.lora_dropout == 0.1  # no expert targeted: dropout is fine


def test_lora_cannot_resume_a_full_fine_tuning_run(tmp_path):
    root = megatron_dir(tmp_path, RECORD)
    (root / "iter_0000100" / "train_state.json").write_text(json.dumps({"iteration": 100}))
    [problem] = problems(["--load", str(root), "--peft", "lora"])
    assert "full fine-tuning run" in problem and "--finetune" in problem
    assert parse_args(["--load", str(root), "--peft", "lora", "--finetune"]).peft == "lora"
