"""LoRA flags: which layers get adapters, their rank and scale, and an adapter to start from."""

from __future__ import annotations

from argparse import ArgumentParser

from megatron_sft.config import LORA_TARGETS, MAMBA_LORA_TARGETS, field_default


def add_peft_args(parser: ArgumentParser) -> None:
    g = parser.add_argument_group("parameter-efficient fine-tuning (LoRA)")
    g.add_argument(
        "--peft",
        choices=["none", "lora"],
        help="lora: freeze the model and train low-rank adapters (default none; a LoRA checkpoint "
        "given to --load turns it on)",
    )
    g.add_argument("--lora-rank", type=int, help="adapter rank r (default 16)")
    g.add_argument("--lora-alpha", type=float, help="scale alpha; the update is alpha/r * B A (default 32)")
    g.add_argument("--lora-dropout", type=float, help="dropout on the adapter's input (default 0.0)")
    g.add_argument(
        "--lora-target-modules",
        nargs="+",
        choices=LORA_TARGETS + MAMBA_LORA_TARGETS,
        help="Megatron layer names to adapt (default the four attention and MLP ones, on hybrid models the Mamba "
        "layers' in_proj too; out_proj there trains, but peft loads no adapter on it, so its run exports merged; on "
        "MoE models linear_fc1/linear_fc2 are the experts')",
    )
    g.add_argument(
        "--lora-load",
        help="a Hugging Face PEFT adapter folder (adapter_config.json + adapter_model.safetensors) " "to start from",
    )
    g.add_argument(
        "--merge-lora",
        action="store_true",
        help="tools/convert.py on a LoRA checkpoint: write a full Hugging Face model with the adapters "
        "merged (default: a PEFT adapter folder); with --save-hf: the merged model too, in iter_N/hf/merged/",
    )


# Flag -> its name in lora.json. These flags default to None (not given) and are resolved in resolve_peft.
LORA_RECORDED = {
    "lora_rank": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout", "lora_target_modules": "targets",
}


def resolve_peft(args, problems: list[str]) -> None:
    """Sets --peft and the LoRA sizes: flag > the LoRA checkpoint in --load (lora.json) or --lora-load > default;
    a contradiction is a problem. Their values are checked by check_lora_values (validate.py)."""
    from megatron_sft.arguments.inputs import resumes_training
    from megatron_sft.peft.record import read_record

    record = read_record(args.load_iteration_dir) if args.load_format == "megatron" else None
    if record is None and args.peft == "lora" and resumes_training(args):
        problems.append(
            f"--load {args.load} is a full fine-tuning run, which --peft lora cannot resume: add "
            "--finetune to train adapters on its weights (with another --save)"
        )
    if record is not None:
        if args.peft == "none":
            problems.append(
                f"--load {args.load} is a LoRA checkpoint (adapters only): drop --peft none, or export it "
                "merged (tools/convert.py --merge-lora) and load that for full fine-tuning"
            )
        args.peft = "lora"
        record["where"] = f"the LoRA checkpoint {args.load}"
    elif args.lora_load:
        record = _adapter_record(args.lora_load, problems)
    args.peft = None if args.peft in (None, "none") else args.peft
    for dest in LORA_RECORDED:
        default = _lora_default(dest, args)
        recorded = record.get(LORA_RECORDED[dest]) if record else None
        given = getattr(args, dest)
        if (
            record
            and given is not None
            and given != recorded
            and not (dest == "lora_target_modules" and set(given) == set(recorded))
        ):
            problems.append(f"--{dest.replace('_', '-')} {given}: {record['where']} has {recorded}; drop the flag")
        setattr(args, dest, given if given is not None else recorded if recorded is not None else default)


def _lora_default(dest: str, args) -> object:
    """The recipe's targets on a model with Mamba layers: its in_proj and out_proj too."""
    if dest == "lora_target_modules" and "M" in (args.hybrid_override_pattern or ""):
        return list(LORA_TARGETS) + ["in_proj"]  # out_proj too is one flag away; peft cannot load that adapter
    return field_default(dest)


def check_lora_values(args, problems: list[str]) -> None:
    """The resolved LoRA settings (reads only)."""
    from pathlib import Path

    if args.peft is None:
        if args.lora_load:
            problems.append("--lora-load needs --peft lora")
        return

    mamba = sorted(set(args.lora_target_modules) & set(MAMBA_LORA_TARGETS))
    if mamba and "M" not in (args.hybrid_override_pattern or ""):
        problems.append(f"--lora-target-modules {' '.join(mamba)}: this model has no Mamba layers; adapt "
                        f"{', '.join(LORA_TARGETS)}")
    from megatron_sft.peft.hf_adapter import peft_unloadable

    refused = peft_unloadable(args.lora_target_modules, "M" in (args.hybrid_override_pattern or ""))
    if refused and getattr(args, "save_hf", None) and not args.merge_lora:
        args.notices.append(f"--save-hf writes the merged model, not a PEFT adapter: peft refuses LoRA on a Mamba "
                            f"layer's {', '.join(refused)} (leave it out of --lora-target-modules for an adapter)")
    if args.lora_rank < 1:
        problems.append(f"--lora-rank {args.lora_rank} must be at least 1")
    if not 0.0 <= args.lora_dropout < 1.0:
        problems.append(f"--lora-dropout {args.lora_dropout} must be in [0, 1)")
    if args.load is None:
        problems.append(
            "--peft lora trains adapters on a model: give it with --load (a Hugging Face directory or a "
            "Megatron checkpoint)"
        )
    experts = getattr(args, "num_experts", None) and {"linear_fc1", "linear_fc2"} & set(args.lora_target_modules)
    if experts and args.lora_dropout:
        problems.append(
            f"--lora-dropout {args.lora_dropout} with MoE experts targeted: PEFT's adapters on fused "
            "experts (target_parameters) allow no dropout; use --lora-dropout 0"
        )
    if args.lora_load and not (Path(args.lora_load) / "adapter_config.json").is_file():
        problems.append(f"--lora-load {args.lora_load}: no adapter_config.json there; give a PEFT adapter folder")
    if getattr(args, "transformer_impl", None) == "transformer_engine":
        problems.append("--peft lora runs on the local layer spec; drop --transformer-impl transformer_engine")


HF_TO_MEGATRON = {
    "q_proj": "linear_qkv",
    "k_proj": "linear_qkv",
    "v_proj": "linear_qkv",
    "o_proj": "linear_proj",
    "gate_proj": "linear_fc1",
    "up_proj": "linear_fc1",
    "down_proj": "linear_fc2",
    "gate_up_proj": "linear_fc1",
    "in_proj": "in_proj",
    "out_proj": "out_proj",
}


def _adapter_record(folder: str, problems: list[str]) -> dict | None:
    """--lora-load's adapter_config.json in lora.json's terms: its rank, alpha and targets become the defaults."""
    import json
    from pathlib import Path

    path = Path(folder) / "adapter_config.json"
    if not path.is_file():
        return None  # reported by _check_lora_values
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        problems.append(f"{path}: not valid JSON ({err})")
        return None
    parameters = [p.rsplit(".", 1)[-1] for p in config.get("target_parameters") or []]
    names = list(config.get("target_modules") or []) + parameters
    unknown = sorted(n for n in names if n not in HF_TO_MEGATRON)
    if unknown or config.get("peft_type") != "LORA":
        problems.append(
            f"{path}: a LoRA adapter on {', '.join(HF_TO_MEGATRON)} is needed, found "
            f"{config.get('peft_type')} on {', '.join(unknown or names)}"
        )
        return None
    targets = sorted({HF_TO_MEGATRON[n] for n in names}, key=(LORA_TARGETS + MAMBA_LORA_TARGETS).index)
    return {
        "rank": config.get("r"),
        "alpha": float(config.get("lora_alpha")),
        "dropout": config.get("lora_dropout", 0.0),
        "targets": targets,
        "where": f"--lora-load {folder}",
    }
