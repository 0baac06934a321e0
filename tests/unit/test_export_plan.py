"""convert.sh's export plan (the layout it launches at) and the export's target directory: decided before any model,
from the checkpoint's own files."""

from __future__ import annotations

import json

import pytest

from megatron_sft.checkpointing import names
from megatron_sft.errors import UserError
from megatron_sft.launch.scripts import _export_layout
from megatron_sft.launch.settings import Settings


def checkpoint(tmp_path, **args):
    (tmp_path / names.RUN_ARGS).write_text(json.dumps({"args": args}))
    return tmp_path


def plan(ckpt, **env):
    layout, flags = _export_layout(Settings(env, {}), ckpt)
    return (layout.tp, layout.pp, layout.ep, layout.etp, layout.dp, layout.cp), flags


def test_an_unquantized_checkpoint_is_exported_at_its_tp_and_pp(tmp_path):
    ckpt = checkpoint(tmp_path, tensor_model_parallel_size=2, pipeline_model_parallel_size=2,
                      expert_model_parallel_size=2, num_layers_per_virtual_pipeline_stage=1)
    sizes, flags = plan(ckpt, DP="4", CP="2")
    assert sizes == (2, 2, 1, 2, 1, 1)  # experts reshard on load: EP 1 fits any TP x PP; DP and CP ignored
    assert flags[-2:] == ["--num-layers-per-virtual-pipeline-stage", "1"]
    assert plan(ckpt, TP="1", EP="1")[0][:2] == (1, 2)  # the environment chooses another


@pytest.mark.parametrize("kind", ["quantized", "grouped", "no run_args"])
def test_what_only_modelopt_exports_or_has_no_recorded_layout_runs_at_tp1(tmp_path, kind):
    ckpt = checkpoint(tmp_path, tensor_model_parallel_size=2, moe_grouped_gemm=kind == "grouped")
    if kind == "quantized":
        (ckpt / names.MODELOPT_STATE).mkdir()
    if kind == "no run_args":
        (ckpt / names.RUN_ARGS).unlink()
    assert plan(ckpt, TP="2")[0][0] == 1


def test_the_export_replaces_only_an_earlier_export(tmp_path):
    from megatron_sft.conversion import _check_export_target

    out = tmp_path / "export"
    assert _check_export_target(out) == out.resolve()  # new
    out.mkdir()
    (out / names.MANIFEST).write_text("{}")
    (out / names.RUN_ARGS).write_text("{}")  # a Megatron checkpoint has a manifest too: never replaced
    with pytest.raises(UserError, match="not an earlier export"):
        _check_export_target(out)
    (out / names.RUN_ARGS).unlink()
    (out / names.PARITY).write_text("{}")
    assert _check_export_target(out) == out.resolve()


def test_the_writer_never_copies_the_sources_weights(tiny_models, tmp_path):
    """convert with --pretrained-model-path takes config and tokenizer from a whole Hugging Face model: its weight
    files must not land beside (or over) the exported ones."""
    import torch

    from megatron_sft.training.hf_output import _write_side_files

    source = tiny_models["qwen3"]
    assert list(source.glob("*.safetensors"))
    _write_side_files(tmp_path, source, torch.bfloat16, full_model=True)
    copied = {p.name for p in tmp_path.iterdir()}
    assert "config.json" in copied and "tokenizer_config.json" in copied
    assert not [n for n in copied if n.endswith((".safetensors", ".bin", ".index.json"))], copied
