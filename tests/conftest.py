"""Shared fixtures: tiny HF models (built once per session) and a torchrun launcher."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WORKERS = Path(__file__).resolve().parent / "distributed" / "workers"


def checkpoint_entries(ckpt_dir: Path) -> set[str]:
    """What a checkpoint directory holds at its top level, dist_checkpointing's shard files as their pattern: the
    files a save wrote, to compare with checkpointing/names.py's list for that kind of checkpoint."""
    from megatron_sft.checkpointing.names import DIST_SHARDS

    return {DIST_SHARDS if p.name.endswith(".distcp") else p.name for p in Path(ckpt_dir).iterdir()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script: str | Path, nproc: int, args: list[str], timeout: float = 420, env: dict | None = None,
             check: bool = True) -> subprocess.CompletedProcess:
    """Launch `script` on `nproc` gloo processes; output is captured and shown on failure."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--master_port={free_port()}", "--master_addr=127.0.0.1", str(script), *map(str, args)]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}"
                             f"\n--- stderr\n{proc.stderr[-8000:]}")
    return proc


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Every tiny family as a Hugging Face directory, made once per test session."""
    from megatron_sft.tiny import FAMILIES, make_tiny_model

    root = tmp_path_factory.mktemp("tiny_models")
    return {family: make_tiny_model(family, root / family) for family in FAMILIES}
