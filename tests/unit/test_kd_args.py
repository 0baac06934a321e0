"""Distillation's flags, YAML and variables: checked before any process group starts, one line each."""

from __future__ import annotations

import json
import shutil

import pytest

from megatron_sft.apps import parse
from megatron_sft.arguments.kd import KdSettings, read_kd_cfg
from megatron_sft.errors import UserError

RUN = ["--train-iters", "3", "--lr", "1e-5", "--seq-length", "64", "--device", "cpu"]


def _parse(tiny_models, *flags: str, world_size: int = 1):
    model = str(tiny_models["qwen3"])
    return parse("finetune", ["--load", model, "--data-path", f"{model}/config.json", *RUN, *flags],
                 world_size=world_size)


def _yaml(tmp_path, text: str) -> str:
    path = tmp_path / "kd.yaml"
    path.write_text(text)
    return str(path)


def test_the_yaml_defaults_and_megatron_lm_keys(tmp_path):
    assert read_kd_cfg(None) == KdSettings(skip_lm_loss=True, kd_loss_scale=1.0, temperature=1.0)
    text = ("logit_layers: [output_layer, output_layer]\nintermediate_layer_pairs: []\nskip_lm_loss: false\n"
            "kd_loss_scale: 0.5\nlogit_kl_temperature: 2\n")
    assert read_kd_cfg(_yaml(tmp_path, text)) == KdSettings(False, 0.5, 2.0)


@pytest.mark.parametrize("text,message", [
    ("kd_loss_alpha: 0.5\n", "kd_loss_alpha: a newer modelopt's key"),
    ("temperature: 2\n", "unknown key 'temperature'"),
    ("logit_kl_temperature: 0\n", "logit_kl_temperature 0 must be a positive number"),
    ("skip_lm_loss: maybe\n", "skip_lm_loss 'maybe' must be true or false"),
    ("intermediate_layer_pairs: [[decoder.final_layernorm, decoder.final_layernorm]]\n",
     "intermediate_layer_pairs: only the logit loss is supported"),
    ("logit_layers: [decoder, decoder]\n", "the logits are the output layers'"),
])
def test_a_bad_yaml_is_refused_naming_file_and_key(tmp_path, text, message):
    path = _yaml(tmp_path, text)
    with pytest.raises(UserError, match=f"--export-kd-cfg {path}: .*{message}"):
        read_kd_cfg(path)


def test_a_teacher_of_another_shape_is_accepted_and_recorded(tiny_models):
    cfg = _parse(tiny_models, "--export-kd-teacher-load", str(tiny_models["qwen3_moe"]))
    assert cfg.is_kd and cfg.to_record()["export_kd_teacher_load"] == str(tiny_models["qwen3_moe"])


def test_a_teacher_of_another_vocabulary_is_refused(tiny_models, tmp_path):
    teacher = shutil.copytree(tiny_models["qwen3"], tmp_path / "teacher")
    config = json.loads((teacher / "config.json").read_text())
    (teacher / "config.json").write_text(json.dumps({**config, "vocab_size": 1024}))
    with pytest.raises(UserError, match=r"--export-kd-teacher-load .*teacher: vocabulary 1024 but the student's is "
                                        r"512; the teacher must share the student's tokenizer"):
        _parse(tiny_models, "--export-kd-teacher-load", str(teacher))


@pytest.mark.parametrize("flags,message", [
    (["--export-kd-cfg", "x.yaml"], "--export-kd-cfg / --export-kd-teacher-model-config need a teacher"),
    (["--export-kd-teacher-load", "/nowhere"], "--export-kd-teacher-load /nowhere: no such file or directory"),
    (["--export-kd-teacher-load", "TEACHER", "--peft", "lora"], "with --peft lora: distillation trains the whole"),
])
def test_what_cannot_distil_is_refused(tiny_models, flags, message):
    flags = [str(tiny_models["qwen3"]) if f == "TEACHER" else f for f in flags]
    with pytest.raises(UserError, match=message):
        _parse(tiny_models, *flags)


def test_a_teacher_split_unevenly_is_refused(tiny_models, tmp_path):
    """The teacher is split like the student: a teacher shape (given in Megatron flag names) whose heads do not
    divide by TP stops at parse time."""
    shape = _yaml(tmp_path, "num_attention_heads: 3\nnum_query_groups: 3\n")
    with pytest.raises(UserError, match="the teacher's num_attention_heads 3 does not divide by "
                                        "--tensor-model-parallel-size 2"):
        _parse(tiny_models, "--export-kd-teacher-load", str(tiny_models["qwen3"]),
               "--export-kd-teacher-model-config", shape, "--tensor-model-parallel-size", "2", world_size=2)
    bad = _yaml(tmp_path, "num_layerz: 3\n")
    with pytest.raises(UserError, match="'num_layerz' is not a model flag"):
        _parse(tiny_models, "--export-kd-teacher-load", str(tiny_models["qwen3"]),
               "--export-kd-teacher-model-config", bad)


def test_the_teacher_shape_comes_from_its_config_then_the_yaml(tiny_models, tmp_path):
    from megatron_sft.arguments.kd import teacher_model_values

    cfg = _parse(tiny_models, "--export-kd-teacher-load", str(tiny_models["qwen3_moe"]))
    values = teacher_model_values(cfg)
    assert values["num_experts"] == 4 and values["padded_vocab_size"] == 512
    shape = _yaml(tmp_path, "num-layers: 6\n")
    cfg = _parse(tiny_models, "--export-kd-teacher-load", str(tiny_models["qwen3_moe"]),
                 "--export-kd-teacher-model-config", shape)
    assert teacher_model_values(cfg)["num_layers"] == 6


def test_finetune_sh_variables(tiny_models, tmp_path):
    from megatron_sft.launch.scripts import _teacher
    from megatron_sft.launch.settings import LaunchError, Settings

    kd = _yaml(tmp_path, "logit_kl_temperature: 2\n")
    teacher = str(tiny_models["qwen3"])
    assert _teacher(Settings({}, {})) == []
    assert _teacher(Settings({"TEACHER_CKPT": teacher, "KD_CFG": kd}, {})) == [
        "--export-kd-teacher-load", teacher, "--export-kd-cfg", kd]
    with pytest.raises(LaunchError, match="KD_CFG needs a teacher: set TEACHER_CKPT too"):
        _teacher(Settings({"KD_CFG": kd}, {}))
    with pytest.raises(LaunchError, match="TEACHER_CKPT=/nowhere: no such directory"):
        _teacher(Settings({"TEACHER_CKPT": "/nowhere"}, {}))


def test_sft_keywords_become_the_flags(tmp_path):
    from megatron_sft.api import _flags, _sft_keywords

    o = _sft_keywords("/m", "d.jsonl", str(tmp_path / "out"), teacher_path="/t", kd_config="kd.yaml")
    flags = _flags(o, 2048)
    assert flags[flags.index("--export-kd-teacher-load") + 1] == "/t"
    assert flags[flags.index("--export-kd-cfg") + 1] == "kd.yaml"
    assert "--export-kd-teacher-model-config" not in flags
