"""Launch finetune runs at DP=2 as finetune.sh does, and read what they leave: shared by the tests of faults,
collisions and interruptions."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import psutil

from tests.conftest import REPO, free_port

ITERS = 6  # saves at 2, 4 and 6


def launch(entry: list[str], flags: list[str], nproc: int = 2, **kwargs):
    """torchrun as finetune.sh starts it (launch/torchrun.py: a user error stays one line)."""
    cmd = [sys.executable, "-m", "megatron_sft.launch.torchrun", f"--nproc_per_node={nproc}",
           f"--master_port={free_port()}", "--master_addr=127.0.0.1", *entry, *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO,
                            **kwargs)


def run(entry: list[str], flags: list[str], nproc: int = 2) -> tuple[int, str]:
    proc = launch(entry, flags, nproc)
    out, _ = proc.communicate(timeout=400)
    return proc.returncode, out


FINETUNE = [str(REPO / "examples" / "finetune.py")]


def flags_for(base: dict, save: Path, load: Path | None = None, iters: int = ITERS) -> list[str]:
    return ["--load", str(load or base["model"]), "--save", str(save), "--data-path", str(base["data"]),
            "--data-cache-dir", str(base["cache"]), "--device", "cpu", "--seq-length", "64", "--micro-batch-size", "2",
            "--global-batch-size", "4", "--lr", "1e-3", "--train-iters", str(iters), "--save-interval", "2",
            "--split", "100,0,0", "--log-interval", "1", "--eval-iters", "0"]


def losses(save: Path) -> dict[int, tuple[float, float]]:
    """iteration -> (loss, grad norm) from metrics.jsonl; the last record of an iteration wins (a resume repeats)."""
    rows = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]
    return {r["iteration"]: (r["loss"], r["grad_norm"]) for r in rows if r["kind"] == "train"}


def tracker(save: Path) -> str:
    return (save / "latest_checkpointed_iteration.txt").read_text().strip()


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def error_lines(out: str) -> list[str]:
    """The `error:` lines, after checking that nothing else reports the failure (no traceback, no torchrun report)."""
    assert "Traceback" not in out and "ChildFailedError" not in out, out[-3000:]
    return [line for line in out.splitlines() if line.startswith("error:")]


def signalled_after_iteration_3(base: dict, save: Path, signum: int, worker: Path) -> tuple[int, str]:
    """A DP=2 run (tests/distributed/workers/slow_step.py) sent `signum` while it holds after iteration 3, as a
    scheduler (SIGTERM) or a terminal's Ctrl-C (SIGINT) would send it to the launcher: (exit code, output)."""
    proc = launch([str(worker), "3", "5"], flags_for(base, save))
    for line in proc.stdout:
        if "holding after iteration 3" in line:
            proc.send_signal(signum)
            break
    out = proc.communicate(timeout=300)[0]
    return proc.returncode, out


def kill_tree(proc: subprocess.Popen) -> None:
    """kill -9 torchrun and every worker (they run in sessions of their own)."""
    parent = psutil.Process(proc.pid)
    for p in [*parent.children(recursive=True), parent]:
        p.kill()
    proc.wait(timeout=60)
