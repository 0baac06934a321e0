"""The on-disk layout of checkpoints this project writes (Megatron-LM compatible).

    ROOT/
      latest_checkpointed_iteration.txt   "release" or the iteration; written LAST
      iter_0000100/ | release/            dist_checkpointing (torch_dist) files
        run_args.json                     resolved arguments, incl. the HF source path
        hf_assets/                        config.json, generation_config.json, tokenizer files
                                          and the chat template used: everything of the HF
                                          source but its weights (what export needs)

The tracker file is written only after every rank finished writing, so a crash mid-save
leaves the previous checkpoint as the latest one and the partial directory is ignored.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from megatron_sft.errors import UserError

TRACKER = "latest_checkpointed_iteration.txt"
RUN_ARGS = "run_args.json"
TRAIN_STATE = "train_state.json"  # iteration, data position, scheduler and layout of a training checkpoint
HF_ASSETS = "hf_assets"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".index.json")


def iteration_dir(root: str | os.PathLike, iteration: int | None) -> Path:
    """`release/` for weights-only conversions (iteration None), else `iter_NNNNNNN/`."""
    return Path(root) / ("release" if iteration is None else f"iter_{iteration:07d}")


def read_tracker(root: str | os.PathLike) -> int | None:
    """The latest complete checkpoint: an iteration, or None for `release`. Errors name the file."""
    path = Path(root) / TRACKER
    if not path.is_file():
        raise UserError(f"{root}: checkpoint directories but no {TRACKER}; the first save never finished")
    text = path.read_text().strip()
    if text == "release":
        return None
    if not text.isdigit():
        raise UserError(f"{path}: expected an iteration number or 'release', found {text!r}")
    return int(text)


def latest_checkpoint_dir(root: str | os.PathLike) -> tuple[Path, int | None]:
    """The directory the tracker points at, checked to hold a complete dist checkpoint."""
    iteration = read_tracker(root)
    path = iteration_dir(root, iteration)
    if not (path / "metadata.json").is_file():
        raise UserError(
            f"{root}: {TRACKER} names {path.name}/, which is missing or truncated (no metadata.json); "
            "restore it or point --load at a complete checkpoint"
        )
    return path, iteration


def is_megatron_checkpoint(path: str | os.PathLike) -> bool:
    """Looks like one (complete or not): a tracker, release/ or iter_NNNNNNN/ directories."""
    p = Path(path)
    return (p / TRACKER).is_file() or (p / "release").is_dir() or any(p.glob("iter_[0-9]*"))


def write_tracker(root: str | os.PathLike, iteration: int | None) -> None:
    """Atomically mark `iteration` as the latest complete checkpoint."""
    root = Path(root)
    tmp = root / (TRACKER + ".tmp")
    tmp.write_text("release" if iteration is None else str(iteration))
    os.replace(tmp, root / TRACKER)


def write_run_args(ckpt_dir: Path, args_record: dict) -> None:
    with open(ckpt_dir / RUN_ARGS, "w") as f:
        json.dump({"args": args_record}, f, indent=1, sort_keys=True, default=str)


def read_run_args(ckpt_dir: Path) -> dict | None:
    path = Path(ckpt_dir) / RUN_ARGS
    if not path.is_file():
        return None
    return json.loads(path.read_text())["args"]


RESUME_FIXED = ("tp", "pp", "ep", "cp")  # the data position also depends on CP (samples are padded to 2 x CP)


def saved_layout(ckpt_dir: str | os.PathLike) -> dict | None:
    """The parallel layout a training checkpoint was saved at (train_state.json), None without one."""
    path = Path(ckpt_dir) / TRAIN_STATE
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text()).get("layout")
    except (ValueError, AttributeError) as err:
        raise UserError(f"{path}: unreadable training state ({err})") from None
    if not saved:
        return None
    saved = dict(saved)
    saved.setdefault("cp", 1)  # checkpoints from before context parallelism existed
    return saved


def resume_layout_problem(ckpt_dir: str | os.PathLike, saved: dict, now: dict) -> str | None:
    """Why a run at layout `now` cannot resume a checkpoint saved at `saved`: optimizer state and data
    position reshard over DP only."""
    if not saved or all(saved.get(k) == now[k] for k in RESUME_FIXED):
        return None
    was = " ".join(f"{k.upper()}={saved.get(k)}" for k in RESUME_FIXED)
    run = " ".join(f"{k.upper()}={now[k]}" for k in RESUME_FIXED)
    return (f"{ckpt_dir}: saved at {was}, resumed at {run}; the optimizer state and the data position carry over "
            "only when DP changes: resume at the saved TP/PP/EP/CP, or add --finetune (finetune.sh: MLM_RESUME=0) "
            "to start a new run from its weights")


def hf_assets_dir(ckpt_dir: str | os.PathLike) -> Path:
    return Path(ckpt_dir) / HF_ASSETS


def copy_hf_assets(src_dir: str | os.PathLike | None, ckpt_dir: Path, chat_template: str | None = None) -> None:
    """Keep the HF config and tokenizer (and the chat template used) next to the weights.

    `src_dir` is an HF model directory or another checkpoint's hf_assets/; weights are skipped.
    """
    dest = hf_assets_dir(ckpt_dir)
    dest.mkdir(parents=True, exist_ok=True)
    if src_dir is not None:
        for path in Path(src_dir).iterdir():
            if path.is_file() and not path.name.endswith(_WEIGHT_SUFFIXES):
                shutil.copy2(path, dest / path.name)
    if chat_template is not None:
        (dest / "chat_template.jinja").write_text(chat_template)
