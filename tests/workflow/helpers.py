"""Shared by the workflow tests: run the example scripts as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
FACTS = REPO / "tests" / "data" / "hf_model_configs.json"


def build_embedded_default(work_dir: Path) -> Path:
    """The tiny model and its task under WORK/tiny, as examples/demo.sh's first step builds them."""
    tiny = work_dir / "tiny"
    subprocess.run([sys.executable, str(REPO / "tools" / "make_embedded_default.py"), "build", "--out", str(tiny)],
                   check=True, capture_output=True)
    return tiny


def script_env(work_dir: Path, **extra: str) -> dict[str, str]:
    """A clean environment: only PATH (this interpreter first), the thread count and what the test sets."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = {
        "PATH": path,
        "HOME": os.environ.get("HOME", "/tmp"),
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
        "MLM_WORK_DIR": str(work_dir),
    }
    env.update(extra)
    return env


def run_script(
    name: str, model: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 400, check: bool = True
) -> subprocess.CompletedProcess:
    """bash examples/<name>.sh MODEL, from `cwd` (any directory works)."""
    proc = subprocess.run(
        ["bash", str(EXAMPLES / f"{name}.sh"), model],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or Path("/"),
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{name}.sh {model} exited {proc.returncode}\n--- stdout\n{proc.stdout[-5000:]}\n"
            f"--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc
