"""quantize.py's formats and refusals that need no model: one line each, naming the flag and what to do."""

from __future__ import annotations

import pytest

from megatron_sft.arguments.quantize import FORMATS, check_cuda_format, check_quantize_args, quant_format
from megatron_sft.errors import UserError


def test_short_forms_are_megatron_lms_and_name_modelopt_configs():
    import modelopt.torch.quantization as mtq

    assert {"fp8", "int8_sq", "int4_awq", "w4a8_awq", "nvfp4"} <= set(FORMATS)
    for name, fmt in FORMATS.items():
        assert isinstance(getattr(mtq, fmt.modelopt_cfg), dict), name


def test_modelopt_names_are_taken_and_anything_else_is_one_line():
    assert quant_format("INT8_DEFAULT_CFG").modelopt_cfg == "INT8_DEFAULT_CFG"
    assert quant_format("NVFP4_AWQ_LITE_CFG").needs_cuda
    with pytest.raises(UserError) as err:
        quant_format("fp4")
    assert "--export-quant-cfg fp4: unknown" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["nvfp4", "mxfp8", "NVFP4_DEFAULT_CFG"])
def test_cuda_only_formats_are_refused_without_cuda(name):
    for device, cuda in (("cpu", True), ("auto", False)):
        with pytest.raises(UserError, match="runs on CUDA only"):
            check_cuda_format(name, device, cuda)
    check_cuda_format(name, "cuda", True)


@pytest.mark.parametrize("name", ["fp8", "int8_sq", "int4_awq", "w4a8_awq"])
def test_cpu_formats_pass(name):
    check_cuda_format(name, "cpu", False)


def _cfg(model, *flags: str, world_size: int = 1):
    from megatron_sft.arguments import parse_args
    from megatron_sft.arguments.quantize import add_quantize_args

    return parse_args(["--load", str(model), "--save", "/tmp/unused", *flags], world_size=world_size,
                      extra=[add_quantize_args])


def test_int4_blocks_must_be_whole_on_each_tensor_parallel_rank(tiny_models):

    # tiny Qwen3: 8 heads x 16 = 128 attention-output inputs, 64 per rank at TP 2: half a 128-wide block
    cfg = _cfg(tiny_models["qwen3"], "--export-quant-cfg", "int4_awq", "--tensor-model-parallel-size", "2",
               world_size=2)
    with pytest.raises(UserError, match=r"64 per tensor-parallel rank at TP 2: not a multiple of the 128-wide"):
        check_quantize_args(cfg)
    check_quantize_args(_cfg(tiny_models["qwen3"], "--export-quant-cfg", "fp8", "--tensor-model-parallel-size", "2",
                             world_size=2))


def test_skipped_layers_and_kv_cache_flags_are_checked(tiny_models):

    with pytest.raises(UserError, match="--num-last-layers-to-skip-quant 9: between 0 and the model's 4 layers"):
        check_quantize_args(_cfg(tiny_models["qwen3"], "--num-last-layers-to-skip-quant", "9"))
    with pytest.raises(UserError, match="--export-kv-cache-quant: .* Transformer Engine"):
        check_quantize_args(_cfg(tiny_models["qwen3"], "--export-kv-cache-quant", "--transformer-impl", "local"))


def test_modelopt_config_disables_what_the_flags_say(tiny_models):
    """The entries appended to modelopt's config, in the order modelopt applies them (the last match wins)."""
    from types import SimpleNamespace

    from megatron_sft.quantization.ptq import modelopt_config

    cfg = _cfg(tiny_models["qwen3"], "--export-quant-cfg", "int8_sq", "--weight-only", "--disable-qkv-quant",
               "--num-first-layers-to-skip-quant", "1", "--num-last-layers-to-skip-quant", "1")
    # pipeline stage 2 of 2: this rank holds layers 3 and 4 (1-based), local indices 0 and 1
    module = SimpleNamespace(decoder=SimpleNamespace(layers=[SimpleNamespace(layer_number=3),
                                                             SimpleNamespace(layer_number=4)]))
    entries = modelopt_config(cfg, module)["quant_cfg"][-3:]
    assert [e["quantizer_name"] for e in entries] == ["*input_quantizer", "*linear_qkv*", "*decoder.layers.1.*"]
    assert all(e["enable"] is False for e in entries)


def test_moe_blocks_are_checked_against_the_expert_tensor_parallel_size(tiny_models):
    """Tiny Qwen3-MoE: experts' down projection takes 32 inputs, never a whole 128-wide block."""
    with pytest.raises(UserError, match=r"expert down projection .* 32 per tensor-parallel rank at expert TP 1"):
        check_quantize_args(_cfg(tiny_models["qwen3_moe"], "--export-quant-cfg", "int4_awq"))


def test_the_launcher_refuses_a_format_given_twice(tmp_path, tiny_models):
    from megatron_sft.launch.main import plan_launch

    env = {"MLM_WORK_DIR": str(tmp_path), "HF_MODEL_CKPT": str(tiny_models["qwen3"]),
           "DATASET": str(tiny_models["qwen3"] / "config.json"), "MLM_EXTRA_ARGS": "--export-quant-cfg int8_sq"}
    with pytest.raises(UserError, match="give the format as QUANT_CFG"):
        plan_launch("quantize", "tiny", env, extra=["fp8"])
    s, plan = plan_launch("quantize", "tiny", {**env, "MLM_EXTRA_ARGS": ""}, extra=["int8_sq", "--calib-size", "8"])
    assert plan.flags[plan.flags.index("--export-quant-cfg") + 1] == "int8_sq" and plan.flags[-2:] == ["--calib-size",
                                                                                                      "8"]


def _export_cfg(tmp_path, monkeypatch, record: dict, pp: int = 1, experts: int | None = None):
    """A quantized checkpoint's directory as export.sh sees it, before any model: its modelopt_state/ and record."""
    import json
    from types import SimpleNamespace

    from megatron_sft.checkpointing import layout

    (tmp_path / "modelopt_state").mkdir()
    (tmp_path / "quantization.json").write_text(json.dumps(record))
    monkeypatch.setattr(layout, "latest_checkpoint_dir", lambda load, step: (tmp_path, None))
    return SimpleNamespace(checkpoint=SimpleNamespace(load=str(tmp_path), ckpt_step=None),
                           parallel=SimpleNamespace(pipeline_model_parallel_size=pp),
                           model=SimpleNamespace(num_experts=experts))


@pytest.mark.parametrize(("record", "pp", "experts", "words"), [
    ({"modelopt_cfg": "INT4_AWQ_CFG"}, 2, None, ["INT4_AWQ_CFG", "set PP=1"]),
    ({"modelopt_cfg": "INT8_SMOOTHQUANT_CFG"}, 1, 4, ["mixture-of-experts", "fp8"]),
    ({"modelopt_cfg": "INT4_AWQ_CFG", "flags": {"export_kv_cache_quant": True}}, 1, None, ["KV cache"]),
    ({"modelopt_cfg": "W4A8_AWQ_BETA_CFG", "flags": {"weight_only": True}}, 1, None, ["--weight-only", "int4_awq"]),
    ({"modelopt_cfg": "INT8_WEIGHT_ONLY_CFG"}, 1, None, ["cannot write", "FP8_DEFAULT_CFG", "generate.sh"]),
])
def test_an_export_the_exporters_cannot_write_is_one_line(tmp_path, monkeypatch, record, pp, experts, words):
    from megatron_sft.conversion import quantized_export_path

    with pytest.raises(UserError) as err:
        quantized_export_path(_export_cfg(tmp_path, monkeypatch, record, pp, experts))
    assert all(w in str(err.value) for w in words) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize(("record", "path"), [({"modelopt_cfg": "FP8_DEFAULT_CFG"}, "megatron"), ({}, "megatron"),
                                              ({"modelopt_cfg": "INT4_AWQ_CFG"}, "hf"),
                                              ({"modelopt_cfg": "INT8_SMOOTHQUANT_CFG"}, "hf")])
def test_each_format_goes_to_the_exporter_that_writes_it(tmp_path, monkeypatch, record, path):
    """FP8 and a checkpoint quantized elsewhere (no record: Megatron-LM's) through modelopt's Megatron exporter."""
    from megatron_sft.conversion import quantized_export_path

    assert quantized_export_path(_export_cfg(tmp_path, monkeypatch, record)) == path
