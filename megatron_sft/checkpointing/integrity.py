"""Self-checking checkpoints: a manifest of every file's size and CRC32 checksums, written last.

A checkpoint directory is published only after its manifest is on disk (see megatron_ckpt.save_checkpoint),
so a directory whose files do not match its manifest was damaged after the save (a truncated copy, a bad
disk). Two depths of check:

- quick: every listed file exists with its recorded size (stat only; parse time, the launcher);
- deep: also the checksums (load time): CRC32 of every MiB of a small file and of 64 evenly spaced MiB of a
  large one (sample_offsets), read in threads, each rank of a torchrun job checking its share of the files.

Checkpoints without a manifest (Megatron-LM's own, or written before manifests existed) are accepted
as they are, with their `metadata.json` as the only sign of completeness.
"""

from __future__ import annotations

import json
import os
import socket
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from megatron_sft.checkpointing.names import DIST_FILES, DIST_FORMAT, MANIFEST, RUN_ARGS

# What every checkpoint this project writes holds, whatever its manifest lists: dist_checkpointing's index
# (.metadata), format (metadata.json) and common state (common.pt), and the run's arguments.
REQUIRED = (*DIST_FILES, RUN_ARGS)
SAMPLE = 1 << 20  # checksummed unit: 1 MiB
MAX_SAMPLES = 64  # a file of up to 64 MiB is checksummed whole; a larger one at 64 evenly spaced MiB
_deep_ok: set[tuple[str, int]] = set()  # (directory, manifest mtime) already checked deeply by this process


def sample_offsets(size: int) -> list[int]:
    """Where a file of `size` bytes is checksummed: every MiB of a small file; 64 MiB spread over a large one,
    first and last included. A checksum of every byte would cost a save more than a tenth of its time (see
    tools/bench_checkpoint.py); truncation and holes are caught by the size and the samples."""
    blocks = max(1, -(-size // SAMPLE))
    if blocks <= MAX_SAMPLES:
        return [i * SAMPLE for i in range(blocks)]
    return [round(i * (blocks - 1) / (MAX_SAMPLES - 1)) * SAMPLE for i in range(MAX_SAMPLES)]


def _threads() -> int:
    """Threads per process: zlib.crc32 and file reads release the GIL; the node's cores are shared by its ranks."""
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, (os.cpu_count() or 1) // max(local_ranks, 1)))


def _block_crc(path: Path, offset: int) -> int:
    with open(path, "rb") as f:
        f.seek(offset)
        return zlib.crc32(f.read(SAMPLE))


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def file_checksums(paths: list[Path], fsync: bool = False) -> dict[Path, list[int]]:
    """The CRC32 of each sampled MiB of each file (sample_offsets), read in a thread pool; with `fsync` the
    files are also flushed to stable storage (in the same pool, overlapping the reads)."""
    tasks = [(p, offset) for p in paths for offset in sample_offsets(p.stat().st_size)]
    with ThreadPoolExecutor(_threads()) as pool:
        flushed = [pool.submit(_fsync_file, p) for p in paths] if fsync else []
        crcs = list(pool.map(lambda task: _block_crc(*task), tasks))
        for future in flushed:
            future.result()
    result: dict[Path, list[int]] = {p: [] for p in paths}
    for (path, _), crc in zip(tasks, crcs):
        result[path].append(crc)
    return result


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically and durably: a temporary file, fsynced, renamed over it, and the
    directory fsynced. A reader sees the old contents or the new, never a part."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp.{socket.gethostname()}.{os.getpid()}")  # one writer's own temporary
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _listed_files(ckpt_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(ckpt_dir)) for p in ckpt_dir.rglob("*") if p.is_file() and p.name != MANIFEST)


def _distributed():
    """torch.distributed when a process group is up, else None (imported late: parsing stays light)."""
    import sys

    dist = sys.modules.get("torch.distributed")
    return dist if dist is not None and dist.is_initialized() else None


def _digests(ckpt_dir: Path, names: list[str], fsync: bool = False) -> dict[str, dict]:
    """{name: {"size", "crc32": [per block]}} of files in `ckpt_dir`, each rank taking a share of the files
    when distributed; every rank gets the whole result."""
    dist = _distributed()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist is not None else (0, 1)
    mine = names[rank::world]
    crcs = file_checksums([ckpt_dir / n for n in mine], fsync=fsync)
    part = {n: {"size": (ckpt_dir / n).stat().st_size, "crc32": crcs[ckpt_dir / n]} for n in mine}
    if world == 1:
        return part
    gathered: list = [None] * world
    dist.all_gather_object(gathered, part)
    return {k: v for piece in gathered for k, v in piece.items()}


def write_manifest(ckpt_dir: Path) -> int:
    """Fsync and checksum every file of `ckpt_dir` (collective: every rank takes its share), then rank 0
    writes the manifest, fsynced. Returns the checkpoint's size in bytes."""
    ckpt_dir = Path(ckpt_dir)
    files = _digests(ckpt_dir, _listed_files(ckpt_dir), fsync=True)
    dist = _distributed()
    if dist is None or dist.get_rank() == 0:
        manifest = {"format": 2, "sample_bytes": SAMPLE, "max_samples": MAX_SAMPLES, "files": files}
        write_durably(ckpt_dir / MANIFEST, json.dumps(manifest, indent=0, sort_keys=True))
        for sub in (p for p in ckpt_dir.rglob("*") if p.is_dir()):
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
        return None if (ckpt_dir / DIST_FORMAT).is_file() else f"{ckpt_dir}: no {DIST_FORMAT} (incomplete save)"
    if not files:
        return f"{ckpt_dir / MANIFEST}: unreadable manifest"
    missing = [name for name in REQUIRED if name not in files]
    if missing:  # a manifest written over an incomplete directory (two runs in one --save did that once)
        return f"{ckpt_dir / missing[0]}: missing; every checkpoint has one (an incomplete save)"
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
    now = _digests(ckpt_dir, sorted(files))
    bad = sorted(name for name, got in now.items() if got["crc32"] != files[name]["crc32"])
    if bad:
        return f"{ckpt_dir / bad[0]}: contents changed since the save (checksum mismatch)"
    _deep_ok.add(key)
    return None
