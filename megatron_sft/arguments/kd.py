"""Flags of knowledge distillation (finetune with a teacher), under Megatron-LM's names.

--export-kd-teacher-load turns distillation on. --export-kd-cfg is Megatron-LM's YAML (modelopt's DistillationConfig
keys, read here rather than by modelopt: its newer releases renamed them). The teacher's shape is its own record
(run_args.json of a checkpoint of this project, config.json of a Hugging Face directory), overridden by
--export-kd-teacher-model-config (or <teacher>/model_config.yaml, Megatron-LM's default): Megatron flag names.
"""

from __future__ import annotations

import os
from argparse import ArgumentParser
from dataclasses import dataclass, fields

from megatron_sft.config import ModelConfig, RunConfig
from megatron_sft.errors import UserError

FLAG = "--export-kd-teacher-load"


def add_kd_args(parser: ArgumentParser) -> None:
    g = parser.add_argument_group("knowledge distillation (a teacher's output distribution as the target)")
    g.add_argument(FLAG, default=None, metavar="PATH",
                   help="the teacher: a Hugging Face directory, a .gguf or a Megatron checkpoint (like --load); its "
                   "vocabulary must be the student's. Turns distillation on (docs/distillation.md)")
    g.add_argument("--export-kd-cfg", default=None, metavar="YAML",
                   help="Megatron-LM's distillation YAML: logit_layers, intermediate_layer_pairs, skip_lm_loss (true), "
                   "kd_loss_scale (1.0), logit_kl_temperature (1.0); defaults when absent")
    g.add_argument("--export-kd-teacher-model-config", default=None, metavar="YAML",
                   help="the teacher's shape where its own config does not say it: Megatron flag names and values "
                   "(default <teacher>/model_config.yaml when present)")


@dataclass(frozen=True)
class KdSettings:
    """The loss, from --export-kd-cfg (Megatron-LM / modelopt 0.46 semantics, docs/distillation.md)."""

    skip_lm_loss: bool = True  # the loss is the KD loss alone; else LM + kd_loss_scale x KD rescaled to the LM's size
    kd_loss_scale: float = 1.0
    temperature: float = 1.0  # logits divided by it for both models (no T^2 factor, as modelopt)


_KEYS = ("logit_layers", "intermediate_layer_pairs", "skip_lm_loss", "kd_loss_scale", "logit_kl_temperature")
_NEWER = {"kd_loss_alpha": "a newer modelopt's key; write skip_lm_loss / kd_loss_scale (Megatron-LM's)",
          "logit_kl_topk": "top-k KL is not supported; leave it out (the full-vocabulary KL is chunked)"}


def read_kd_cfg(path: str | None) -> KdSettings:
    """The settings of an --export-kd-cfg file (None: the defaults); one-line errors naming the file and key."""
    if path is None:
        return KdSettings()
    where = f"--export-kd-cfg {path}"
    values = _read_yaml_mapping(path, where, "keys")
    for key in values:
        if key in _NEWER:
            raise UserError(f"{where}: {key}: {_NEWER[key]}")
        if key not in _KEYS:
            raise UserError(f"{where}: unknown key {key!r}; the keys are {', '.join(_KEYS)}")
    layers = values.get("logit_layers") or ["output_layer", "output_layer"]
    if list(layers) != ["output_layer", "output_layer"]:
        raise UserError(f"{where}: logit_layers {layers}: the logits are the output layers' "
                        "([output_layer, output_layer])")
    if values.get("intermediate_layer_pairs"):
        raise UserError(f"{where}: intermediate_layer_pairs: only the logit loss is supported; set it to []")
    skip = values.get("skip_lm_loss", True)
    scale = values.get("kd_loss_scale", 1.0)
    temperature = values.get("logit_kl_temperature", 1.0)
    if not isinstance(skip, bool):
        raise UserError(f"{where}: skip_lm_loss {skip!r} must be true or false")
    for key, value in (("kd_loss_scale", scale), ("logit_kl_temperature", temperature)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise UserError(f"{where}: {key} {value!r} must be a positive number")
    return KdSettings(skip, float(scale), float(temperature))


_MODEL_FIELDS = {f.name for f in fields(ModelConfig)}


def teacher_model_values(cfg: RunConfig) -> dict:
    """The teacher's ModelConfig fields (padded_vocab_size included): its own record, then the YAML's overrides."""
    from megatron_sft.arguments.dpo import reference_architecture

    source = cfg.kd.export_kd_teacher_load
    record, where = reference_architecture(source, FLAG)
    values = {k: v for k, v in record.items() if k in _MODEL_FIELDS}
    if "vocab_size" in record:  # a Hugging Face config's vocab_size is the padded vocabulary
        values["padded_vocab_size"] = record["vocab_size"]
    if "family" in record:
        values["model_family"] = record["family"]
    overrides = cfg.kd.export_kd_teacher_model_config
    default = os.path.join(source, "model_config.yaml")
    if overrides is None and os.path.isfile(default):
        overrides = default
    if overrides is not None:
        values.update(_read_model_config(overrides))
    if not values.get("num_layers"):
        raise UserError(f"{FLAG} {source}: its shape is not recorded ({where}); give "
                        "--export-kd-teacher-model-config with num_layers, hidden_size, ...")
    return values


def _read_yaml_mapping(path: str, where: str, what: str) -> dict:
    """The mapping a YAML file holds (empty file: {}); one line naming `where` when it is missing or not one."""
    import yaml

    if not os.path.isfile(path):
        raise UserError(f"{where}: no such file")
    with open(path) as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise UserError(f"{where}: not a mapping of {what} to values")
    return values


def _read_model_config(path: str) -> dict:
    values = _read_yaml_mapping(path, f"--export-kd-teacher-model-config {path}", "flag names")
    out = {}
    for key, value in values.items():
        name = str(key).lstrip("-").replace("-", "_")
        if name not in _MODEL_FIELDS:
            raise UserError(f"--export-kd-teacher-model-config {path}: {key!r} is not a model flag (num_layers, "
                            "hidden_size, ffn_hidden_size, num_attention_heads, ...)")
        out[name] = value
    return out


def check_kd_args(cfg: RunConfig) -> None:
    """Everything about the teacher that can be known before any model exists."""
    if not cfg.is_kd:
        if cfg.kd.export_kd_cfg or cfg.kd.export_kd_teacher_model_config:
            raise UserError("--export-kd-cfg / --export-kd-teacher-model-config need a teacher: "
                            f"add {FLAG} PATH")
        return
    read_kd_cfg(cfg.kd.export_kd_cfg)
    if cfg.data.loss_normalization != "token":
        raise UserError(f"{FLAG} with --loss-normalization {cfg.data.loss_normalization}: distillation's loss is the "
                        "mean over supervised tokens; leave --loss-normalization out")
    if cfg.data.multiple_validation_sets:
        raise UserError(f"{FLAG} with --multiple-validation-sets: distillation validates its --valid-data-path files "
                        "as one set (leave the flag out)")
    if cfg.is_lora:
        raise UserError(f"{FLAG} with --peft lora: distillation trains the whole student (or a quantized one, QAD); "
                        "leave out --peft lora")
    if cfg.parallel.virtual_pipeline_model_parallel_size:
        raise UserError(f"{FLAG}: distillation runs on a non-interleaved pipeline (as Megatron-LM's); leave out "
                        "--num-layers-per-virtual-pipeline-stage")
    source = cfg.kd.export_kd_teacher_load
    if not os.path.exists(source):
        raise UserError(f"{FLAG} {source}: no such file or directory; give a Hugging Face directory, a .gguf or a "
                        "Megatron checkpoint")
    teacher = teacher_model_values(cfg)
    vocab, ours = teacher.get("padded_vocab_size"), cfg.model.padded_vocab_size
    if vocab and ours and vocab != ours:
        raise UserError(f"{FLAG} {source}: vocabulary {vocab} but the student's is {ours}; the teacher must share "
                        "the student's tokenizer")
    _check_teacher_layout(cfg, teacher)


def _check_teacher_layout(cfg: RunConfig, teacher: dict) -> None:
    """The teacher is split over the student's layout: its heads over TP, its layers over PP, its experts over EP."""
    p, source = cfg.parallel, cfg.kd.export_kd_teacher_load
    checks = [("num_attention_heads", p.tensor_model_parallel_size, "--tensor-model-parallel-size"),
              ("num_query_groups", p.tensor_model_parallel_size, "--tensor-model-parallel-size"),
              ("num_layers", p.pipeline_model_parallel_size * (p.virtual_pipeline_model_parallel_size or 1),
               "--pipeline-model-parallel-size (x virtual stages)"),
              ("num_experts", p.expert_model_parallel_size, "--expert-model-parallel-size")]
    for name, parts, flag in checks:
        value = teacher.get(name)
        if value and parts > 1 and value % parts:
            raise UserError(f"{FLAG} {source}: the teacher's {name} {value} does not divide by {flag} {parts}; the "
                            "teacher is split like the student")
