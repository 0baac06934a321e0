"""Reading and arranging checkpoint directories (Megatron-LM compatible): CheckpointDir (one checkpoint as every
reader sees it), the tracker, iteration directories, the checkpoint to load (checked against its manifest),
publishing, pruning. The names inside a checkpoint directory, and the layout they make, are in names.py.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from megatron_sft.checkpointing import integrity
from megatron_sft.checkpointing.names import (
    CHAT_TEMPLATE,
    DELETING,
    HF_ASSETS,
    HF_DIR,
    ITERATION_DIR,
    LORA_RECORD,
    MODELOPT_STATE,
    QUANT_RECORD,
    RELEASE,
    REPLACED,
    RUN_ARGS,
    STAGING,
    TRACKER,
    TRAIN_STATE,
)
from megatron_sft.errors import UserError

log = logging.getLogger(__name__)


class CheckpointDir:
    """One checkpoint directory (iter_N/ or release/) as every reader sees it: its parts by their names in names.py,
    read when asked; a part that cannot be read is one line naming its file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"CheckpointDir({str(self.path)!r})"

    @property
    def hf_assets(self) -> Path:
        return self.path / HF_ASSETS

    @property
    def hf(self) -> Path:
        """--save-hf's Hugging Face directory."""
        return self.path / HF_DIR

    @property
    def is_training(self) -> bool:
        """A training checkpoint (iteration, data position, optimizer), not weights only."""
        return (self.path / TRAIN_STATE).is_file()

    @property
    def is_quantized(self) -> bool:
        return (self.path / MODELOPT_STATE).is_dir()

    def _json(self, name: str, what: str) -> dict | None:
        path = self.path / name
        if not path.is_file():
            return None
        try:
            value = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"{path}: unreadable {what} ({type(err).__name__}: {err}); the checkpoint is "
                            "damaged") from None
        if not isinstance(value, dict):
            raise UserError(f"{path}: unreadable {what} (a JSON {type(value).__name__}, not an object); the "
                            "checkpoint is damaged")
        return value

    def run_args(self) -> dict | None:
        """The resolved arguments it was saved with (None: written elsewhere, without run_args.json)."""
        record = self._json(RUN_ARGS, "run record")
        if record is not None and not isinstance(record.get("args"), dict):
            raise UserError(f'{self.path / RUN_ARGS}: unreadable run record; expected {{"args": {{...}}}}')
        return None if record is None else record["args"]

    def train_state(self) -> dict | None:
        return self._json(TRAIN_STATE, "training state")

    def lora_record(self) -> dict | None:
        """lora.json: the adapters' spec and their base (None: a full checkpoint)."""
        return self._json(LORA_RECORD, "LoRA record")

    def quant_record(self) -> dict:
        """What quantize wrote (empty for a checkpoint quantized elsewhere, e.g. by Megatron-LM)."""
        return self._json(QUANT_RECORD, "quantization record") or {}

    def saved_layout(self) -> dict | None:
        """The parallel layout a training checkpoint was saved at (train_state.json), None without one."""
        state = self.train_state()
        saved = state.get("layout") if state is not None else None
        if not saved:
            return None
        return {"cp": 1, **saved}  # checkpoints from before context parallelism existed have no cp

    def model_layout(self) -> dict[str, int | None]:
        """How the model was split when it was saved (run_args.json): tp, pp, ep, etp, vp_layers (layers per
        virtual pipeline stage, or None). An exporter at this layout reads each rank's own shards, no resharding."""
        args = self.run_args()
        if args is None:
            raise UserError(f"{self.path}: no {RUN_ARGS}; the checkpoint is incomplete")
        tp = int(args.get("tensor_model_parallel_size") or 1)
        return {"tp": tp, "pp": int(args.get("pipeline_model_parallel_size") or 1),
                "ep": int(args.get("expert_model_parallel_size") or 1),
                "etp": int(args.get("expert_tensor_parallel_size") or tp),
                "vp_layers": args.get("num_layers_per_virtual_pipeline_stage")}

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".index.json")


def iteration_dir(root: str | os.PathLike, iteration: int | None) -> Path:
    """`release/` for weights-only conversions (iteration None), else `iter_NNNNNNN/`."""
    return Path(root) / (RELEASE if iteration is None else ITERATION_DIR % iteration)


def read_tracker(root: str | os.PathLike) -> int | None:
    """The latest complete checkpoint: an iteration, or None for `release`. Errors name the file."""
    path = Path(root) / TRACKER
    if not path.is_file():
        raise UserError(f"{root}: checkpoint directories but no {TRACKER}; the first save never finished")
    text = path.read_text().strip()
    if text == RELEASE:
        return None
    if not text.isdigit():
        raise UserError(f"{path}: expected an iteration number or 'release', found {text!r}")
    return int(text)


def saved_iterations(root: str | os.PathLike) -> list[int]:
    """The iterations that have a directory under `root`, newest first (staging directories excluded)."""
    prefix = ITERATION_DIR.split("%")[0]
    found = (p.name[len(prefix):] for p in Path(root).glob(f"{prefix}*") if p.is_dir())
    return sorted((int(n) for n in found if n.isdigit()), reverse=True)


def latest_checkpoint_dir(
    root: str | os.PathLike, step: int | None = None, deep: bool = False
) -> tuple[Path, int | None]:
    """The checkpoint to load: iteration `step` (--ckpt-step), else the one the tracker names; checked
    against its manifest (`deep`: checksums too, collective under torch.distributed).

    A damaged or missing tracked checkpoint falls back to the newest intact iteration, with a warning that
    names both; a damaged `step` is refused. Errors name the damaged file and the way out."""
    root = Path(root)
    if step is not None:
        path = iteration_dir(root, step)
        problem = integrity.check_checkpoint(path, deep)
        if problem:
            raise UserError(f"--ckpt-step {step}: {problem}; {_choices(root)}")
        return path, step
    tracker_missing = not (root / TRACKER).is_file()
    if tracker_missing and not saved_iterations(root):
        read_tracker(root)  # raises the message for a first save that never finished
    iteration = None if tracker_missing else read_tracker(root)
    path = iteration_dir(root, iteration)
    problem = f"no {TRACKER}" if tracker_missing else integrity.check_checkpoint(path, deep)
    if problem is None:
        return path, iteration
    for other in saved_iterations(root):
        if other != iteration and integrity.check_checkpoint(iteration_dir(root, other), deep) is None:
            _warn_once(f"{root}: {problem}; loading {iteration_dir(root, other).name}, the newest intact checkpoint "
                       "(--ckpt-step N selects another)")
            return iteration_dir(root, other), other
    raise UserError(f"{problem}; no intact checkpoint beside it in {root}")


def _choices(root: Path) -> str:
    steps = saved_iterations(root)
    return f"saved iterations: {', '.join(map(str, steps[:8]))}" if steps else f"no iteration saved in {root}"


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)


def is_megatron_checkpoint(path: str | os.PathLike) -> bool:
    """Looks like one (complete or not): a tracker, release/ or iter_NNNNNNN/ directories."""
    p = Path(path)
    prefix = ITERATION_DIR.split("%")[0]
    return (p / TRACKER).is_file() or (p / RELEASE).is_dir() or any(p.glob(f"{prefix}[0-9]*"))


def resumable_checkpoint(root: str | os.PathLike) -> Path | None:
    """The training checkpoint a run saving into `root` continues from (finetune.sh, sft()): None when `root`
    holds no checkpoint, or weights only (a conversion's release/). Damaged or unreadable checkpoint state raises
    the loader's own one-line UserError: no launcher may start over silently on top of saved work."""
    if not Path(root).is_dir() or not is_megatron_checkpoint(root):
        return None
    path, _ = latest_checkpoint_dir(root)
    return path if CheckpointDir(path).is_training else None


def write_tracker(root: str | os.PathLike, iteration: int | None) -> None:
    """Atomically mark `iteration` as the latest complete checkpoint."""
    integrity.write_durably(Path(root) / TRACKER, RELEASE if iteration is None else str(iteration))


def staging_dir(final: Path, token: str) -> Path:
    """Where the run named `token` writes its save of `final` before renaming it into place."""
    return final.parent / f".{final.name}{STAGING}.{token}"


def remove_dir(path: Path) -> None:
    """Rename, then delete: a half-deleted checkpoint never looks like one."""
    if not path.exists():
        return
    doomed = path.parent / f".{path.name}{DELETING}"
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    shutil.rmtree(doomed)


def publish(staging: Path, final: Path) -> None:
    """Rename a finished save into place; an existing directory of that name (a damaged or superseded
    save of the same iteration, never the tracked one) is replaced, not rewritten."""
    replaced = final.parent / f".{final.name}{REPLACED}"
    shutil.rmtree(replaced, ignore_errors=True)
    if final.exists():
        os.replace(final, replaced)
    os.replace(staging, final)
    integrity.fsync_dir(final.parent)
    shutil.rmtree(replaced, ignore_errors=True)


def prune(root: Path, keep_last: int, newest: int) -> list[Path]:
    """--keep-last: delete the iterations older than `newest` beyond the `keep_last` most recent. Called only
    once `newest` is complete, verified and tracked."""
    older = [i for i in saved_iterations(root) if i < newest][max(keep_last - 1, 0):]
    removed = [iteration_dir(root, i) for i in older]
    for path in removed:
        remove_dir(path)
    return removed


def write_run_args(ckpt_dir: Path, args_record: dict) -> None:
    with open(ckpt_dir / RUN_ARGS, "w") as f:
        json.dump({"args": args_record}, f, indent=1, sort_keys=True, default=str)


RESUME_FIXED = ("tp", "pp", "ep", "cp")  # the data position also depends on CP (samples are padded to 2 x CP)


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


def copy_hf_assets(src_dir: str | os.PathLike | None, ckpt_dir: Path, chat_template: str | None = None) -> None:
    """Keep the HF config and tokenizer (and the chat template used) next to the weights.

    `src_dir` is an HF model directory or another checkpoint's hf_assets/; weights are skipped.
    """
    dest = CheckpointDir(ckpt_dir).hf_assets
    dest.mkdir(parents=True, exist_ok=True)
    if src_dir is not None:
        for path in Path(src_dir).iterdir():
            if path.is_file() and not path.name.endswith(WEIGHT_SUFFIXES):
                shutil.copy2(path, dest / path.name)
    if chat_template is not None:
        (dest / CHAT_TEMPLATE).write_text(chat_template)
