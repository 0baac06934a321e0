"""Checks on what the flags point at, made before any model is built: the tokenizer, the output directory
(creatable, and never the model the run starts from) and the longest sample against the model's positions
(resolve.py checks --tokenizer-model as given, before checkpoints fill it in).
Each problem is one line that names the flag, its value and what to do."""

from __future__ import annotations

import os
from argparse import Namespace
from pathlib import Path

from megatron_sft.checkpointing.layout import CheckpointDir, resume_layout_problem
from megatron_sft.errors import UserError


def check_inputs(args: Namespace, problems: list[str]) -> None:
    _check_save(args, problems)
    _check_positions(args, problems)
    _check_resume_layout(args, problems)


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_save(args: Namespace, problems: list[str]) -> None:
    if not getattr(args, "save", None):
        return
    save = Path(args.save).expanduser().resolve()
    existing = _nearest_existing(save)
    if existing == save and not save.is_dir():
        problems.append(f"--save {args.save} is a file; give a directory for the checkpoints")
    elif not existing.is_dir():
        problems.append(f"--save {args.save} cannot be created: {existing} is a file; choose another directory")
    else:
        problem = _write_probe(save)
        if problem:
            problems.append(f"--save {args.save} cannot be written: {problem}; choose a writable directory")
    start = _starting_model(args)
    if start is not None and Path(start).resolve() == save:
        problems.append(
            f"--save {args.save} is the model this run starts from ({start}); saving there would write "
            "over it: save somewhere else"
        )


def _write_probe(save: Path) -> str | None:
    """Create the directory and a file in it for real: permission bits say little to root (containers), and
    read-only or pseudo file systems (/proc, /sys) only refuse when written."""
    probe = save / f".write_probe.{os.getpid()}"
    try:
        save.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        return err.strerror or type(err).__name__
    return None


def resumes_training(args: Namespace) -> bool:
    """--load is a training checkpoint (train_state.json) that this run continues (no --finetune)."""
    return (
        args.load_format == "megatron"
        and not args.finetune
        and CheckpointDir(args.load_iteration_dir).is_training
    )


def _starting_model(args: Namespace) -> str | None:
    """What the run reads its weights from and must not overwrite: an HF directory, or a Megatron checkpoint
    that is not being resumed (weights only, or --finetune). Resuming into --save is what --load X --save X
    is for."""
    if args.load_format == "hf":
        return args.hf_model_path or args.load
    if args.load_format == "megatron":
        return None if resumes_training(args) else args.load
    return args.pretrained_model_path


def _check_positions(args: Namespace, problems: list[str]) -> None:
    """Positions restart at every packed sample, so the longest sample, not the pack, must fit the model."""
    positions, seq = args.max_position_embeddings, args.seq_length
    longest = args.max_sample_length or seq
    if not positions or not longest or longest <= positions or args.position_embedding_type == "learned_absolute":
        return  # learned_absolute: validate.py checks --seq-length itself
    flag = f"--max-sample-length {longest}" if args.max_sample_length else f"--seq-length {seq}"
    problems.append(
        f"{flag} lets one sample reach {longest} tokens, past the model's --max-position-embeddings "
        f"{positions}; add --max-sample-length {positions} (longer samples are truncated) or use a "
        "model trained for longer sequences"
    )


def is_training(args: Namespace) -> bool:
    """The command trains (a run length is given); generation, MMLU and conversion load any layout."""
    return args.train_iters is not None or args.train_samples is not None or args.train_epochs is not None


def _check_resume_layout(args: Namespace, problems: list[str]) -> None:
    if not is_training(args) or not resumes_training(args):
        return
    now = {
        "tp": args.tensor_model_parallel_size,
        "pp": args.pipeline_model_parallel_size,
        "ep": args.expert_model_parallel_size,
        "cp": args.context_parallel_size,
    }
    problem = resume_layout_problem(args.load, CheckpointDir(args.load_iteration_dir).saved_layout(), now)
    if problem:
        problems.append(problem)


def check_not_converting_in_place(args: Namespace) -> None:
    """A conversion writes a new checkpoint: never into the one it reads (any format, any kind)."""
    if args.save and args.load and Path(args.save).expanduser().resolve() == Path(args.load).expanduser().resolve():
        raise UserError(f"--save {args.save} is --load, the checkpoint being converted; choose another directory")
