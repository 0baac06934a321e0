"""Where the architecture comes from. One rule: explicit flag > the checkpoint's own record > Megatron's default.

The checkpoint record is config.json for a Hugging Face directory, and run_args.json (written next to
every checkpoint of this project as {"args": {dest: value}}) for a Megatron checkpoint.
"""

from __future__ import annotations

import json
import math
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_sft.config import field_default
from megatron_sft.checkpointing.gguf import hf_dir_from_gguf, is_gguf
from megatron_sft.checkpointing.layout import (
    RUN_ARGS,
    TRACKER,
    CheckpointDir,
    is_megatron_checkpoint,
    latest_checkpoint_dir,
)
from megatron_sft.data.tokenizer import tokenizer_problem
from megatron_sft.errors import UserError
from megatron_sft.models.hf_config import HF_FIELDS, HF_NEGATED_FIELDS, megatron_args_from_hf_config, read_hf_config

# Megatron-LM's defaults for the flags whose argparse default is None (so explicit ones can be told apart).
# None here: derived from other values in derive_architecture().
# What a checkpoint describes: explicit flag > the checkpoint's record > Megatron's default (the RunConfig field's).
ARCHITECTURE_KEYS = (
    "num_layers",
    "hidden_size",
    "ffn_hidden_size",
    "num_attention_heads",
    "num_query_groups",
    "kv_channels",
    "max_position_embeddings",
    "group_query_attention",
    "position_embedding_type",
    "rotary_percent",
    "rotary_base",
    "use_rope_scaling",
    "rope_scaling_factor",
    "normalization",
    "norm_epsilon",
    "swiglu",
    "qk_layernorm",
    "add_qkv_bias",
    "add_bias_linear",
    "untie_embeddings_and_output_weights",
    "num_experts",
    "moe_ffn_hidden_size",
    "moe_router_topk",
    "moe_router_pre_softmax",
    "moe_router_score_function",
    "moe_router_load_balancing_type",
    "moe_aux_loss_coeff",
    "moe_router_enable_expert_bias",
    "moe_router_topk_scaling_factor",
    "moe_shared_expert_intermediate_size",
    "squared_relu",
    "hybrid_override_pattern",
    "mamba_state_dim",
    "mamba_head_dim",
    "mamba_num_groups",
    "mamba_num_heads",
    "mamba_chunk_size",
    "mamba_conv_kernel",
    "attention_dropout",
    "hidden_dropout",
    "init_method_std",
    "make_vocab_size_divisible_by",
)
MEGATRON_DEFAULTS: dict[str, Any] = {key: field_default(key) for key in ARCHITECTURE_KEYS}
# Hyper-parameters a checkpoint records but a run may change: a differing flag is a notice, not an error.
TUNABLE_KEYS = (
    "attention_dropout",
    "hidden_dropout",
    "init_method_std",
    "moe_aux_loss_coeff",
    "moe_router_load_balancing_type",
)
# Taken from the record when not given, never compared: they do not change what the weights mean.
SOFT_KEYS = ("group_query_attention", "make_vocab_size_divisible_by")


@dataclass
class Source:
    """A checkpoint's record of the architecture: values by dest name, and the file they came from."""

    kind: str  # "hf" (config.json) or "megatron" (run_args.json)
    file: Path
    values: dict[str, Any]


def resolve_architecture(args: Namespace, options: dict[str, str]) -> list[str]:
    """Fill every architecture value of `args` in place; return the contradictions found.

    `options` maps dest names to option strings, for messages. Raises UserError when --load or
    --pretrained-model-path cannot be read: nothing else can be checked then.
    """
    problems: list[str] = []
    if args.tokenizer_model is not None:  # as given: the defaults below come from checkpoints
        problem = tokenizer_problem(args.tokenizer_model)
        if problem:
            problems.append(problem)
    source = resolve_source(args)
    args.arch_sources = {}
    for key, default in MEGATRON_DEFAULTS.items():
        given = getattr(args, key)
        if source is not None and key in source.values:
            recorded = source.values[key]
            if given is None:
                setattr(args, key, recorded)
                args.arch_sources[key] = str(source.file)
                continue
            if key not in SOFT_KEYS and not _same(given, recorded):
                message = _contradiction(key, given, recorded, source, options)
                (args.notices if key in TUNABLE_KEYS else problems).append(message)
        if given is None:
            setattr(args, key, default)
        args.arch_sources[key] = "default" if given is None else "flag"
    if source is not None:
        args.model_family = source.values.get("family")
        args.hf_architecture = source.values.get("hf_architecture")
        args.checkpoint_vocab_size = source.values.get("vocab_size")
        args.checkpoint_vocab_file = str(source.file)
    return problems


def derive_architecture(args: Namespace, options: dict[str, str]) -> None:
    """Megatron-LM's derived defaults (ffn size, head dim, query groups, max positions)."""
    if not args.group_query_attention:
        if args.arch_sources["num_query_groups"] == "flag" and args.num_query_groups != args.num_attention_heads:
            args.notices.append(f"{options['num_query_groups']} has no effect without --group-query-attention")
        args.num_query_groups = args.num_attention_heads
    elif args.num_query_groups is None:
        args.num_query_groups = 1
    if args.kv_channels is None and args.hidden_size and args.num_attention_heads:
        args.kv_channels = args.hidden_size // args.num_attention_heads
    if args.ffn_hidden_size is None and args.hidden_size:
        # Megatron-LM: 4h, or for SwiGLU 2/3 of it rounded down to a multiple of 64.
        four_h = 4 * args.hidden_size
        args.ffn_hidden_size = int(four_h * 2 / 3 / 64) * 64 if args.swiglu else four_h
    if args.max_position_embeddings is None:
        args.max_position_embeddings = args.seq_length
    if args.num_experts and args.moe_ffn_hidden_size is None:
        args.moe_ffn_hidden_size = args.ffn_hidden_size


def resolve_source(args: Namespace) -> Source | None:
    """The checkpoint record behind --load / --pretrained-model-path; sets load_format and hf_model_path."""
    args.load_format, args.hf_model_path, args.load_iteration_dir = None, None, None
    for attr in ("model_family", "hf_architecture", "checkpoint_vocab_size", "checkpoint_vocab_file"):
        setattr(args, attr, None)
    _gguf_to_hf(args)
    pretrained = Path(args.pretrained_model_path) if args.pretrained_model_path else None
    if pretrained is not None:
        check_hf_dir(pretrained, "--pretrained-model-path")
    source = None
    if args.load:
        load = Path(args.load)
        if is_megatron_checkpoint(load):
            source = _megatron_source(args, load)
        elif (load / "config.json").is_file():
            check_hf_dir(load, "--load")
            source = _hf_source(args, load)
            if pretrained is not None:
                args.notices.append(f"--pretrained-model-path not used: --load {load} is a Hugging Face model")
        elif pretrained is None or (load.exists() and (not load.is_dir() or any(load.iterdir()))):
            # Without --pretrained-model-path there is nothing to start from; with it, --load may be
            # missing or empty (the run saves there first) but must not hold something else.
            raise UserError(_bad_load_message(args.load, load, pretrained))
    if source is None and pretrained is not None:
        source = _hf_source(args, pretrained)
    if args.tokenizer_model is None:
        args.tokenizer_model = args.hf_model_path
    return source


def _gguf_to_hf(args: Namespace) -> None:
    """A .gguf --load / --pretrained-model-path / teacher stands for its cached Hugging Face directory from here on."""
    for attr, flag in (("load", "--load"), ("pretrained_model_path", "--pretrained-model-path"),
                       ("export_kd_teacher_load", "--export-kd-teacher-load")):
        value = getattr(args, attr, None)
        if is_gguf(value):
            hf_dir = hf_dir_from_gguf(value, args.gguf_cache_dir, flag)
            setattr(args, attr, str(hf_dir))
            args.notices.append(f"{flag} {value}: the GGUF is read from its Hugging Face form {hf_dir}")


def _bad_load_message(flag_value: str, load: Path, pretrained: Path | None) -> str:
    if not load.exists():
        return f"--load {flag_value}: no such directory; give a Hugging Face model directory or a Megatron checkpoint"
    return (
        f"--load {flag_value}: neither a Hugging Face model directory (config.json and *.safetensors) nor a Megatron "
        f"checkpoint ({TRACKER}); point it at one" + ("" if pretrained else ", or add --pretrained-model-path")
    )


def check_hf_dir(path: Path, flag: str) -> None:
    """An HF model directory: config.json plus every safetensors shard it needs."""
    if not path.is_dir():
        raise UserError(f"{flag} {path}: no such directory; give a Hugging Face model directory")
    if not (path / "config.json").is_file():
        raise UserError(f"{flag} {path}: no config.json; not a Hugging Face model directory")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, AttributeError) as err:
            raise UserError(f"{index}: unreadable safetensors index ({err})") from None
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            raise UserError(f"{flag} {path}: {index.name} names missing weight files: {', '.join(missing[:3])}")
    elif not any(path.glob("*.safetensors")):
        raise UserError(
            f"{flag} {path}: config.json but no weights (model.safetensors or model.safetensors.index.json)"
        )


def _megatron_source(args: Namespace, load: Path) -> Source | None:
    iter_dir, _ = latest_checkpoint_dir(load, args.ckpt_step)
    args.load_format, args.load_iteration_dir = "megatron", str(iter_dir)
    view = CheckpointDir(iter_dir)
    assets = view.hf_assets  # the tokenizer saved with the checkpoint outlives the HF source
    if args.tokenizer_model is None and assets.is_dir():
        args.tokenizer_model = str(assets)
    record = view.run_args()
    if record is None:  # written elsewhere: flags, --pretrained-model-path's config or defaults describe it
        return None
    path = iter_dir / RUN_ARGS
    if args.pretrained_model_path:
        args.notices.append(f"--pretrained-model-path not used: --load {load} holds a Megatron checkpoint")
    pretrained = args.pretrained_model_path and str(Path(args.pretrained_model_path).resolve())
    args.hf_model_path = pretrained or record.get("hf_model_path")
    if args.tokenizer_model is None:
        args.tokenizer_model = record.get("tokenizer_model")
    values = {k: record[k] for k in MEGATRON_DEFAULTS if k in record}
    values.update(
        family=record.get("model_family"),
        hf_architecture=record.get("hf_architecture"),
        vocab_size=record.get("padded_vocab_size"),
    )
    return Source("megatron", path, values)


def _hf_source(args: Namespace, model_dir: Path) -> Source:
    model_dir = model_dir.resolve()  # recorded in run_args.json: must survive a change of directory
    config, path = read_hf_config(model_dir)
    values = megatron_args_from_hf_config(config, path)
    args.hf_model_path = str(model_dir)
    args.load_format = args.load_format or "hf"
    return Source("hf", path, values)


def _same(given: Any, recorded: Any) -> bool:
    if isinstance(given, float) or isinstance(recorded, float):
        return recorded is not None and math.isclose(float(given), float(recorded), rel_tol=1e-6)
    return given == recorded


def _contradiction(key: str, given: Any, recorded: Any, source: Source, options: dict[str, str]) -> str:
    flag = options.get(key, key)
    flag_text = flag if isinstance(given, bool) else f"{flag} {given}"
    if source.kind == "hf" and key in HF_FIELDS:
        field, value = HF_FIELDS[key], (not recorded if key in HF_NEGATED_FIELDS else recorded)
        where = f"{field}={_show(value)} in {source.file}"
    else:
        where = f"{key}={_show(recorded)} in {source.file}"
    verb = "overrides" if key in TUNABLE_KEYS else "contradicts"
    fix = "" if key in TUNABLE_KEYS else f"; drop {flag} to use the checkpoint's value, or load a matching checkpoint"
    return f"{flag_text} {verb} {where}{fix}"


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) or value is None else str(value)


def describe_sources(args: Namespace) -> list[str]:
    """The architecture in force, grouped by where each value came from (flag, checkpoint file, default): the
    Python entry points' counterpart of the scripts' settings block."""
    groups: dict[str, list[str]] = {}
    for key, source in args.arch_sources.items():
        value = getattr(args, key)
        if value is not None and value is not False:
            groups.setdefault(source, []).append(f"{key}={_show(value)}")
    order = sorted(groups, key=lambda s: (s != "flag", s == "default", s))
    return [
        f"architecture ({'flags' if s == 'flag' else 'Megatron defaults' if s == 'default' else s}): "
        + " ".join(groups[s])
        for s in order
    ]
