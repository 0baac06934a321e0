"""Flags of preference training (the dpo app): the loss and the reference model. The data are preference pairs
(data/preference.py): the same --data-path, --split and cache flags as fine-tuning."""

from __future__ import annotations

from argparse import ArgumentParser

from megatron_sft.config import RunConfig
from megatron_sft.errors import UserError


def add_dpo_args(parser: ArgumentParser) -> None:
    g = parser.add_argument_group("preference training (DPO)")
    g.add_argument("--dpo-loss-type", choices=["sigmoid", "ipo", "hinge"], default="sigmoid",
                   help="sigmoid (DPO), ipo or hinge; TRL's definitions")
    g.add_argument("--dpo-beta", type=float, default=0.1, help="how far from the reference the policy may move")
    g.add_argument("--dpo-label-smoothing", type=float, default=0.0,
                   help="sigmoid only: the share of pairs assumed mislabelled (conservative DPO), in [0, 0.5)")
    g.add_argument("--dpo-sft-weight", type=float, default=0.0,
                   help="RPO: add this times the chosen responses' mean token NLL to the loss")
    g.add_argument("--ref-load", default=None,
                   help="the reference model (a Hugging Face directory or Megatron checkpoint); default: the model "
                   "the run starts from (--load)")
    parser.set_defaults(preference=True)  # the data are preference pairs


def check_dpo_args(cfg: RunConfig) -> None:
    d = cfg.dpo
    if d.dpo_beta <= 0:
        raise UserError(f"--dpo-beta {d.dpo_beta} must be positive")
    if not 0.0 <= d.dpo_label_smoothing < 0.5:
        raise UserError(f"--dpo-label-smoothing {d.dpo_label_smoothing} must be in [0, 0.5)")
    if d.dpo_label_smoothing and d.dpo_loss_type != "sigmoid":
        raise UserError(f"--dpo-label-smoothing applies to --dpo-loss-type sigmoid, not {d.dpo_loss_type}")
    if d.dpo_sft_weight < 0:
        raise UserError(f"--dpo-sft-weight {d.dpo_sft_weight} must be 0 or more")
    if cfg.data.loss_normalization != "token" or cfg.data.loss_turns != "all":
        raise UserError("--loss-normalization / --loss-turns shape the SFT loss; DPO's is per pair (leave them out)")
    if cfg.training.neftune_noise_alpha is not None:
        raise UserError("--neftune-noise-alpha: NEFTune is for fine-tuning (finetune); leave it out of dpo")
    if cfg.data.multiple_validation_sets:
        raise UserError("--multiple-validation-sets is for finetune runs; dpo validates its --valid-data-path files "
                        "as one set (leave the flag out)")
    if d.ref_load:
        check_reference(cfg, d.ref_load)


# What a reference's weights must share with the policy to be loaded into its model.
ARCHITECTURE = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                "kv_channels", "num_experts", "moe_ffn_hidden_size", "hybrid_override_pattern")
PRESENCE = ("num_experts", "hybrid_override_pattern")  # unset is a value too: dense, not hybrid


def check_reference(cfg: RunConfig, ref_load: str) -> None:
    """--ref-load is a full model of the policy's architecture: a Hugging Face directory or a Megatron checkpoint
    (not LoRA adapters, not a quantized model); a LoRA run's reference is its own base."""
    import os

    if cfg.is_lora and os.path.realpath(ref_load) != os.path.realpath(cfg.checkpoint.load or ""):
        raise UserError(f"--ref-load {ref_load}: a LoRA run's reference is its base model (the adapters off); "
                        "leave --ref-load out")
    values, where = reference_architecture(ref_load, "--ref-load")
    for name in ARCHITECTURE:
        ours, theirs = getattr(cfg.model, name, None), values.get(name)
        if ours != theirs and (name in PRESENCE or (ours is not None and theirs is not None)):
            raise UserError(f"--ref-load {ref_load}: {name} {_shown(theirs)} ({where}) but the policy's is "
                            f"{_shown(ours)}; the reference must have the policy's architecture")
    vocab = values.get("padded_vocab_size") or values.get("vocab_size")
    if cfg.model.padded_vocab_size and vocab and vocab != cfg.model.padded_vocab_size:
        raise UserError(f"--ref-load {ref_load}: vocabulary {vocab} ({where}) but the policy's is "
                        f"{cfg.model.padded_vocab_size}; the reference must share the policy's tokenizer")


def _shown(value) -> str:
    return "none" if value is None else str(value)


def reference_architecture(ref_load: str, flag: str) -> tuple[dict, str]:
    """The architecture values a whole model (`flag`: --ref-load, a teacher) records, and the file they come from."""
    from pathlib import Path

    from megatron_sft.checkpointing.layout import RUN_ARGS, CheckpointDir, is_megatron_checkpoint, latest_checkpoint_dir
    from megatron_sft.models.hf_config import megatron_args_from_hf_config, read_hf_config

    path = Path(ref_load)
    if is_megatron_checkpoint(path):
        iter_dir, _ = latest_checkpoint_dir(path, None)
        view = CheckpointDir(iter_dir)
        if view.is_quantized:
            raise UserError(f"{flag} {ref_load}: a quantized checkpoint; give the unquantized model")
        if view.lora_record() is not None:
            raise UserError(f"{flag} {ref_load}: LoRA adapters, not a whole model; export it merged "
                            "(examples/export.sh) and give that")
        return view.run_args() or {}, str(iter_dir / RUN_ARGS)
    if (path / "config.json").is_file():
        from megatron_sft.arguments.resolve import check_hf_dir

        check_hf_dir(path, flag)
        config, where = read_hf_config(path)
        return megatron_args_from_hf_config(config, where), str(where)
    raise UserError(f"{flag} {ref_load}: neither a Hugging Face model directory nor a Megatron checkpoint")
