"""parse_args returns one frozen, typed RunConfig; run_args.json is written from it and read back into it."""

from __future__ import annotations

import dataclasses
import json

import pytest

from megatron_sft.arguments import parse_args
from megatron_sft.config import SECTIONS, RunConfig
from tests.unit.test_arguments import hf_dir

FLAGS = ["--seq-length", "64", "--lr", "1e-4", "--train-iters", "5", "--data-path", "chat.jsonl",
         "--tensor-model-parallel-size", "2", "--micro-batch-size", "2", "--bf16", "--peft", "lora"]


def test_sections_hold_resolved_and_derived_values(tmp_path):
    cfg = parse_args(["--load", str(hf_dir(tmp_path)), *FLAGS], world_size=4)
    assert isinstance(cfg, RunConfig)
    assert cfg.model.num_layers == 28 and cfg.arch_sources["num_layers"].endswith("config.json")  # from the file
    assert cfg.parallel.data_parallel_size == 2 and cfg.parallel.expert_tensor_parallel_size == 2
    assert cfg.training.num_microbatches == 1 and cfg.training.global_batch_size == 4
    assert cfg.training.params_dtype == "bf16" and cfg.checkpoint.export_dtype == "bf16"
    assert cfg.training.lr_decay_iters == 5 and cfg.lora.peft == "lora" and cfg.lora.lora_rank == 16
    assert cfg.data.seq_length == 64 and cfg.data.micro_batch_size == 2 and cfg.data.data_path == ["chat.jsonl"]
    assert cfg.checkpoint.load_format == "hf" and cfg.tokenizer.tokenizer_model == cfg.checkpoint.hf_model_path
    assert cfg.seq_length == 64 and cfg.peft == "lora"  # flat reads for scripts and tests


def test_frozen_and_replaced_not_edited(tmp_path):
    cfg = parse_args(["--load", str(hf_dir(tmp_path)), *FLAGS], world_size=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.training.train_iters = 9
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model = None
    later = cfg.replace(train_iters=9, micro_batch_size=1)
    assert (later.train_iters, cfg.train_iters) == (9, 5)
    assert later.training.micro_batch_size == later.data.micro_batch_size == 1, "the data section's copy follows"
    with pytest.raises(KeyError, match="no field 'train_itres'"):
        cfg.replace(train_itres=9)


def test_run_args_json_round_trip(tmp_path):
    cfg = parse_args(["--load", str(hf_dir(tmp_path)), *FLAGS], world_size=4)
    record = json.loads(json.dumps(cfg.to_record()))  # what run_args.json holds
    back = RunConfig.from_record(record)
    for name in SECTIONS:
        assert getattr(back, name) == getattr(cfg, name), name
    assert record["hidden_size"] == 1024 and record["tensor_model_parallel_size"] == 2  # Megatron-LM's names


def test_an_old_record_reads_with_defaults():
    back = RunConfig.from_record({"num_layers": 4, "hidden_size": 64, "some_removed_flag": 1})
    assert back.model.num_layers == 4 and back.model.normalization == "LayerNorm" and back.training.lr is None


def test_every_parsed_value_has_a_section(tmp_path):
    """from_namespace refuses a namespace value no section holds (it would be lost): shown with a stray one."""
    from argparse import Namespace

    with pytest.raises(RuntimeError, match="no RunConfig section holds \\['stray_value'\\]"):
        RunConfig.from_namespace(Namespace(stray_value=1, notices=[], arch_sources={}))


def test_a_length_not_given_stays_unset(tmp_path):
    """Generation and MMLU without --seq-length fall back to the model's positions, not to a packing default."""
    from megatron_sft.errors import ConfigErrors

    cfg = parse_args(["--load", str(hf_dir(tmp_path)), "--context-parallel-size", "3"], world_size=3)
    assert cfg.data.seq_length is None and cfg.seq_length is None
    with pytest.raises(ConfigErrors, match="--seq-length is required for training"):
        parse_args(["--load", str(hf_dir(tmp_path, name="hf2")), "--train-iters", "2", "--lr", "1e-4",
                    "--data-path", "chat.jsonl"])


def test_expert_tensor_parallelism_must_fit_a_dense_model_too(tmp_path):
    from megatron_sft.errors import ConfigErrors

    with pytest.raises(ConfigErrors, match="--expert-tensor-parallel-size 3 = 3 must divide world size 2"):
        parse_args(["--load", str(hf_dir(tmp_path)), "--expert-tensor-parallel-size", "3"], world_size=2)
