"""A resume compares this run's settings with the checkpoint's (run_args.json and its scheduler state): every
difference is honoured with one notice, or refused in one line that names the flag allowing it.

    setting                                    a difference on resume
    TP, PP, EP, CP                             refused (the optimizer state and data position reshard over DP only)
    DP                                         honoured (RNG states start fresh; training/state.py)
    the data: --data-path, --train-data-path,  refused: the saved data position counts packs of the old data;
      --finetune-hf-dataset, --split,            --finetune starts a new run from the weights
      --seq-length, --max-sample-length, ...
    --global-batch-size                        refused: the schedule counts samples, so its length would be wrong;
                                                 --override-opt_param-scheduler resizes it from the new flags
    --micro-batch-size                         honoured (the same global batch, accumulated differently): notice
    LR/WD schedule: --lr, --min-lr, decay      honoured from the resume iteration on: the scheduler takes the new
      style and length, warmup, weight decay,    values, with one notice naming each change;
      run length (--train-iters, ...)            --use-checkpoint-opt_param-scheduler keeps the checkpoint's instead
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from megatron_sft.config import RunConfig
from megatron_sft.checkpointing import layout
from megatron_sft.errors import UserError

log = logging.getLogger(__name__)

# What the saved data position (consumed packs) refers to: the packs of these settings.
DATA_KEYS = ("data_path", "train_data_path", "finetune_hf_dataset", "finetune_hf_dataset_split", "split",
             "seq_length", "max_sample_length", "drop_long_samples", "data_format", "sample_limit", "chat_template")
# The scheduler's values (Megatron's OptimizerParamScheduler.state_dict) a resume may change.
SCHEDULE_KEYS = ("max_lr", "min_lr", "lr_warmup_steps", "lr_decay_steps", "lr_decay_style", "start_wd", "end_wd",
                 "wd_incr_steps", "wd_incr_style")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def saved_args(ckpt_dir: Path) -> dict:
    path = Path(ckpt_dir) / layout.RUN_ARGS
    try:
        return json.loads(path.read_text())["args"]
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{path}: unreadable ({type(err).__name__}); the checkpoint is damaged: load another "
                        "iteration with --ckpt-step N") from None


def check_resume(cfg: RunConfig, ckpt_dir: Path) -> None:
    """Refuse what cannot be resumed as asked; note what changes (before the model is built)."""
    saved, now = saved_args(ckpt_dir), cfg.to_record()
    changed = [k for k in DATA_KEYS if k in saved and saved[k] != now.get(k)]
    if changed:
        what = "; ".join(f"{_flag(k)} {saved[k]!r} -> {now.get(k)!r}" for k in changed)
        raise UserError(f"{ckpt_dir}: saved with other data ({what}); its data position counts packs of that data. "
                        "Resume with the same data, or add --finetune (finetune.sh: MLM_RESUME=0) to start a new run "
                        "from its weights")
    t = cfg.training
    if saved.get("global_batch_size") not in (None, t.global_batch_size) and not t.override_opt_param_scheduler:
        was = saved["global_batch_size"]
        raise UserError(f"{ckpt_dir}: saved at --global-batch-size {was}, resumed at {t.global_batch_size}; the "
                        "learning-rate schedule counts samples of the old batch. Resume at --global-batch-size "
                        f"{was}, add --override-opt_param-scheduler to size the schedule from the new flags, or "
                        "--finetune to start a new run from its weights")
    if saved.get("micro_batch_size") not in (None, t.micro_batch_size):
        log.info("note: --micro-batch-size %s -> %s: the same global batch, accumulated in other micro-batches",
                 saved["micro_batch_size"], t.micro_batch_size)


def schedule_changes(scheduler, saved_state: dict) -> list[str]:
    """`key old -> new` for each scheduler value the new flags give differently from the checkpoint's."""
    return [f"{k} {saved_state[k]} -> {getattr(scheduler, k)}" for k in SCHEDULE_KEYS
            if k in saved_state and hasattr(scheduler, k) and saved_state[k] != getattr(scheduler, k)]


def _retarget_param_groups(scheduler, saved_state: dict) -> None:
    """The learning rate of a step comes from each parameter group's own max_lr/min_lr (Megatron sets them per group,
    scaled for special parameters), and the optimizer state just loaded restored the checkpoint's: move them to the
    new schedule's values, keeping each group's ratio, and recompute the current lr."""
    def moved(value: float, old: float, new: float) -> float:
        return value * new / old if old else new

    for group in scheduler.optimizer.param_groups:
        if "max_lr" in group:
            group["max_lr"] = moved(group["max_lr"], saved_state["max_lr"], scheduler.max_lr)
        if "min_lr" in group:
            group["min_lr"] = moved(group["min_lr"], saved_state["min_lr"], scheduler.min_lr)
    scheduler.step(increment=0)


def load_scheduler(scheduler, saved_state: dict, cfg: RunConfig, iteration: int) -> None:
    """Restore the scheduler's position; its values from the new flags (default, with a notice) or, with
    --use-checkpoint-opt_param-scheduler, from the checkpoint (with a notice when the flags differ)."""
    changes = schedule_changes(scheduler, saved_state)
    keep = cfg.training.use_checkpoint_opt_param_scheduler
    scheduler.override_opt_param_scheduler = (bool(changes) or cfg.training.override_opt_param_scheduler) and not keep
    scheduler.use_checkpoint_opt_param_scheduler = True
    scheduler.load_state_dict(saved_state)
    if scheduler.override_opt_param_scheduler:
        _retarget_param_groups(scheduler, saved_state)
    if changes and keep:
        log.info("note: --use-checkpoint-opt_param-scheduler: the checkpoint's schedule kept (the flags say %s)",
                 "; ".join(changes))
    elif changes:
        log.info("note: the learning-rate schedule follows the new flags from iteration %d: %s "
                 "(--use-checkpoint-opt_param-scheduler keeps the checkpoint's)", iteration + 1, "; ".join(changes))
