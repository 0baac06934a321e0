"""dpo's --ref-load: another reference model is checked before any process group starts (architecture, kind)."""

from __future__ import annotations

import pytest

from megatron_sft.apps import parse
from megatron_sft.errors import UserError

RUN = ["--train-iters", "3", "--lr", "1e-6", "--seq-length", "64", "--device", "cpu"]


def _parse(tiny_models, *flags: str):
    model = str(tiny_models["qwen3"])
    return parse("dpo", ["--load", model, "--data-path", f"{model}/config.json", *RUN, *flags])


def test_a_reference_of_another_architecture_is_refused(tiny_models):
    with pytest.raises(UserError, match=r"--ref-load .*qwen2: kv_channels 8 \(.*config.json\) but the policy's is 16"):
        _parse(tiny_models, "--ref-load", str(tiny_models["qwen2"]))


def test_a_moe_reference_for_a_dense_policy_is_refused(tiny_models):
    with pytest.raises(UserError, match=r"--ref-load .*qwen3_moe: num_experts 4 .* but the policy's is none"):
        _parse(tiny_models, "--ref-load", str(tiny_models["qwen3_moe"]))


def test_a_reference_that_is_no_model_is_refused(tiny_models, tmp_path):
    with pytest.raises(UserError, match="neither a Hugging Face model directory nor a Megatron checkpoint"):
        _parse(tiny_models, "--ref-load", str(tmp_path))


def test_a_lora_run_keeps_its_base_as_reference(tiny_models, tmp_path):
    with pytest.raises(UserError, match="a LoRA run's reference is its base model"):
        _parse(tiny_models, "--peft", "lora", "--ref-load", str(tiny_models["qwen3_untied"]))


def test_a_reference_of_the_same_architecture_is_accepted(tiny_models, tmp_path):
    import shutil

    copy = shutil.copytree(tiny_models["qwen3"], tmp_path / "ref")
    assert _parse(tiny_models, "--ref-load", str(copy)).dpo.ref_load == str(copy)
