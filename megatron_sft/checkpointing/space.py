"""Free space for the next checkpoint, checked before training starts and before every save, so a full disk
is one line instead of a dist_checkpointing traceback and a half-written directory."""

from __future__ import annotations

import shutil
from pathlib import Path

MARGIN = 1.05  # pickled metadata, hf_assets and the manifest on top of the tensors


def free_bytes(path: str | Path) -> int:
    """Free bytes on the file system that holds `path` (or would: its nearest existing parent)."""
    p = Path(path).expanduser().resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def shortfall(root: str | Path, need: int, basis: str) -> str | None:
    """Why a checkpoint of about `need` bytes does not fit under `root`, or None. `basis` says where the
    figure comes from ("the last checkpoint", "estimated from the parameters")."""
    free = free_bytes(root)
    if free >= need * MARGIN:
        return None
    return (f"--save {root}: {gb(free)} free on its file system, a checkpoint needs about {gb(need * MARGIN)} "
            f"({basis}); free some space, use --keep-last N, or save elsewhere")
