"""Shared by the workflow tests: read conf files through bash, run the example scripts as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
EXAMPLES = REPO / "examples"
FACTS = REPO / "tests" / "data" / "hf_model_configs.json"


def conf_models() -> list[str]:
    return sorted(str(p.relative_to(CONF).with_suffix("")) for p in CONF.rglob("*.sh") if p.name != "arguments.sh")


def read_conf(model: str, work_dir: str = "/work-dir") -> dict:
    """MODEL_ARGS, MODEL_TRAIN_ARGS and CONF_* values of conf/<model>.sh, as bash sees them."""
    script = (
        'set -euo pipefail; MODEL_ARGS=(); MODEL_TRAIN_ARGS=(); source "$1"; '
        'printf "%s\\0" "${MODEL_ARGS[@]}"; printf "\\n\\0"; '
        'printf "%s\\0" ${MODEL_TRAIN_ARGS[@]+"${MODEL_TRAIN_ARGS[@]}"}; printf "\\n\\0"; '
        'for v in ${!CONF_*}; do printf "%s=%s\\0" "$v" "${!v}"; done'
    )
    out = subprocess.run(
        ["bash", "-c", script, "conf", str(CONF / f"{model}.sh")],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ["PATH"], "MLM_WORK_DIR": work_dir},
    ).stdout
    parts = out.split("\0")
    first = parts.index("\n")
    second = parts.index("\n", first + 1)
    defaults = dict(p.split("=", 1) for p in parts[second + 1 :] if p)
    # printf prints its format once even with no arguments: drop that empty word
    return {
        "model_args": [a for a in parts[:first] if a],
        "train_args": [a for a in parts[first + 1 : second] if a],
        "defaults": defaults,
    }


def flag_values(args: list[str]) -> dict[str, str | bool]:
    """--flag value pairs (True for a flag without a value); repeated flags keep the last."""
    values: dict[str, str | bool] = {}
    i = 0
    while i < len(args):
        flag = args[i]
        assert flag.startswith("--"), f"expected a flag, got {flag!r} in {args}"
        if i + 1 < len(args) and not args[i + 1].startswith("--"):
            values[flag], i = args[i + 1], i + 2
        else:
            values[flag], i = True, i + 1
    return values


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
