"""lora.json: what a LoRA checkpoint needs besides its adapters, the base model it applies to.

A LoRA checkpoint holds only adapters (plus optimizer, scheduler, RNG and data position), so it
names its base: the path and a SHA-256 of the base's weight files, checked whenever the checkpoint
is loaded (resume, generate, export). Adapters on another base would load without error and give
a model nobody trained.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from megatron_sft.checkpointing import layout
from megatron_sft.checkpointing.names import LORA_RECORD
from megatron_sft.errors import UserError

log = logging.getLogger(__name__)
RECORD = LORA_RECORD


@dataclass(frozen=True)
class Base:
    path: str  # a Hugging Face directory or a Megatron checkpoint root
    format: str  # "hf" or "megatron"
    sha256: str


def _weight_files(base: Path, fmt: str) -> list[Path]:
    if fmt == "hf":
        return sorted(base.glob("*.safetensors"))
    ckpt_dir, _ = layout.latest_checkpoint_dir(base)
    return sorted(p for p in ckpt_dir.iterdir() if p.suffix == ".distcp" or p.name == ".metadata")


def fingerprint(base: str | Path, fmt: str) -> str:
    """SHA-256 over the names and bytes of the base's weight files (about 1 s per GB)."""
    digest = hashlib.sha256()
    for path in _weight_files(Path(base), fmt):
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()


def _fingerprint_once(base: str | Path, fmt: str) -> str:
    """Rank 0 reads the files, the others get its answer: N ranks need not read the base N times."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return fingerprint(base, fmt)
    box = [fingerprint(base, fmt) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def describe_base(base: str | Path, fmt: str) -> Base:
    return Base(str(Path(base).resolve()), fmt, _fingerprint_once(base, fmt))


def record_text(spec, base: Base) -> str:
    return json.dumps({"rank": spec.rank, "alpha": spec.alpha, "dropout": spec.dropout,
                       "targets": list(spec.targets), "base": asdict(base)}, indent=1)


def read_record(ckpt_dir: str | Path | None) -> dict | None:
    """The lora.json of a checkpoint directory, or None for a full checkpoint."""
    return layout.CheckpointDir(ckpt_dir).lora_record() if ckpt_dir else None


def base_of(record: dict, ckpt_dir: Path) -> Base:
    """The base a LoRA checkpoint applies to, checked to be there and unchanged."""
    base = Base(**record["base"])
    if not Path(base.path).exists():
        raise UserError(f"{ckpt_dir}/{RECORD}: its base model {base.path} is gone; restore it there (the adapters "
                        "only make sense on that exact model)")
    now = _fingerprint_once(base.path, base.format)
    if now != base.sha256:
        raise UserError(f"{ckpt_dir}/{RECORD}: the base model at {base.path} changed since training (SHA-256 "
                        f"{now[:12]}..., recorded {base.sha256[:12]}...); put the original weights back")
    return base
