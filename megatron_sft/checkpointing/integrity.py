"""Self-checking checkpoints: a manifest of every file's size and CRC32, written last.

A checkpoint directory is published only after its manifest is on disk (see megatron_ckpt.save_checkpoint),
so a directory whose files do not match its manifest was damaged after the save (a truncated copy, a bad
disk). Two depths of check:

- quick: every listed file exists with its recorded size (stat only; parse time, the launcher);
- deep: also the CRC32 of the contents (load time). CRC32 runs at several GB/s, and under torchrun
  each rank checks its own share of the files, so a check costs a fraction of the load itself.

Checkpoints without a manifest (Megatron-LM's own, or written before manifests existed) are accepted
as they are, with their `metadata.json` as the only sign of completeness.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

MANIFEST = "manifest.json"
_CHUNK = 16 << 20
_deep_ok: set[tuple[str, int]] = set()  # (directory, manifest mtime) already checked deeply by this process


def file_crc32(path: Path, fsync: bool = False) -> int:
    """CRC32 of a file's contents; with `fsync`, the file is also flushed to stable storage."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
        if fsync:
            os.fsync(f.fileno())
    return crc


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _listed_files(ckpt_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(ckpt_dir)) for p in ckpt_dir.rglob("*") if p.is_file() and p.name != MANIFEST)


def _distributed():
    """torch.distributed when a process group is up, else None (imported late: parsing stays light)."""
    import sys

    dist = sys.modules.get("torch.distributed")
    return dist if dist is not None and dist.is_initialized() else None


def _shared(work, items: list) -> dict:
    """Run `work(item) -> (key, value)` over `items`, split across the ranks when distributed; every rank
    gets the whole result."""
    dist = _distributed()
    if dist is None or dist.get_world_size() == 1:
        return dict(work(i) for i in items)
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = dict(work(i) for i in items[rank::world])
    gathered: list = [None] * world
    dist.all_gather_object(gathered, mine)
    return {k: v for part in gathered for k, v in part.items()}


def write_manifest(ckpt_dir: Path) -> int:
    """Fsync and checksum every file of `ckpt_dir` (collective: every rank takes its share), then rank 0
    writes the manifest, fsynced. Returns the checkpoint's size in bytes."""
    ckpt_dir = Path(ckpt_dir)
    names = _listed_files(ckpt_dir)

    def digest(name: str):
        path = ckpt_dir / name
        return name, {"size": path.stat().st_size, "crc32": file_crc32(path, fsync=True)}

    files = _shared(digest, names)
    dist = _distributed()
    if dist is None or dist.get_rank() == 0:
        tmp = ckpt_dir / (MANIFEST + ".tmp")
        with open(tmp, "w") as f:
            json.dump({"format": 1, "files": files}, f, indent=0, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, ckpt_dir / MANIFEST)
        for sub in [ckpt_dir, *(p for p in ckpt_dir.rglob("*") if p.is_dir())]:
            fsync_dir(sub)
    return sum(v["size"] for v in files.values())


def read_manifest(ckpt_dir: Path) -> dict | None:
    path = Path(ckpt_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return {}  # unreadable: every file counts as unaccounted for (reported by check_checkpoint)


def checkpoint_size(ckpt_dir: Path) -> int | None:
    """Bytes of a checkpoint per its manifest; None without one."""
    files = read_manifest(ckpt_dir)
    return sum(v["size"] for v in files.values()) if files else None


def check_checkpoint(ckpt_dir: Path, deep: bool = False) -> str | None:
    """Why `ckpt_dir` is not an intact checkpoint (one line naming the file), or None. `deep` also compares
    checksums; it is collective under torch.distributed (each rank reads a share)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return f"{ckpt_dir} is missing"
    files = read_manifest(ckpt_dir)
    if files is None:  # written by Megatron-LM or an older version: no manifest to check against
        return None if (ckpt_dir / "metadata.json").is_file() else f"{ckpt_dir}: no metadata.json (incomplete save)"
    if not files:
        return f"{ckpt_dir / MANIFEST}: unreadable manifest"
    for name, want in sorted(files.items()):
        path = ckpt_dir / name
        if not path.is_file():
            return f"{path}: missing (listed in {MANIFEST})"
        size = path.stat().st_size
        if size != want["size"]:
            return f"{path}: {size} bytes, {want['size']} when saved (truncated or damaged)"
    key = (str(ckpt_dir.resolve()), (ckpt_dir / MANIFEST).stat().st_mtime_ns)
    if not deep or key in _deep_ok:
        return None
    crcs = _shared(lambda name: (name, file_crc32(ckpt_dir / name)), sorted(files))
    bad = sorted(name for name, crc in crcs.items() if crc != files[name]["crc32"])
    if bad:
        return f"{ckpt_dir / bad[0]}: contents changed since the save (checksum mismatch)"
    _deep_ok.add(key)
    return None
