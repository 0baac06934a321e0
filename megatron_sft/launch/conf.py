"""conf/<org>/<model>.sh: what a model's checkpoint cannot tell (layout, recompute, MoE dispatch, run defaults).

A conf is bash, read through bash, so it may use $MLM_WORK_DIR. It sets
    MODEL_ARGS=(...)        flags for every script (e.g. --seq-length 4096 --bf16)
    MODEL_TRAIN_ARGS=(...)  flags for finetune.sh only (e.g. recompute, --sequence-parallel)
    CONF_<NAME>=value       the default of variable NAME (CONF_TP=8, CONF_MLM_OPTIM_ARGS="--lr ...")
The architecture is never restated: it comes from the checkpoint's config.json.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from megatron_sft.launch.settings import LaunchError

REPO_DIR = Path(__file__).resolve().parents[2]
CONF_DIR = REPO_DIR / "conf"

_READ = (
    'set -euo pipefail; MODEL_ARGS=(); MODEL_TRAIN_ARGS=(); source "$1" >&2; '
    'printf "%s\\0" ${MODEL_ARGS[@]+"${MODEL_ARGS[@]}"}; printf "\\n\\0"; '
    'printf "%s\\0" ${MODEL_TRAIN_ARGS[@]+"${MODEL_TRAIN_ARGS[@]}"}; printf "\\n\\0"; '
    'for v in ${!CONF_*}; do printf "%s=%s\\0" "$v" "${!v}"; done'
)


@dataclass
class ModelConf:
    name: str
    path: Path
    model_args: list[str] = field(default_factory=list)
    train_args: list[str] = field(default_factory=list)
    defaults: dict[str, str] = field(default_factory=dict)  # CONF_<NAME> -> value


def conf_models(conf_dir: Path = CONF_DIR) -> list[str]:
    return sorted(str(p.relative_to(conf_dir).with_suffix("")) for p in conf_dir.rglob("*.sh"))


def read_conf(model: str, work_dir: str, conf_dir: Path = CONF_DIR, script: str = "SCRIPT") -> ModelConf:
    """conf/<model>.sh as bash sees it, with MLM_WORK_DIR set; unknown models list the known ones."""
    known = conf_models(conf_dir)
    if not model:
        raise LaunchError(f"usage: {script} MODEL, with MODEL one of: {' '.join(known)}")
    if model not in known:
        raise LaunchError(f"unknown MODEL '{model}'; configs in conf/: {' '.join(known)}")
    path = conf_dir / f"{model}.sh"
    # The user's environment (a conf may use $HOME, $HF_HOME, ...), without CONF_* values that are not the conf's.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONF_")}
    proc = subprocess.run(["bash", "-c", _READ, "conf", str(path)], capture_output=True, text=True, check=False,
                          env={**env, "MLM_WORK_DIR": work_dir})
    if proc.returncode:
        raise LaunchError(f"{path}: bash could not read it: {proc.stderr.strip().splitlines()[-1:]}")
    parts = proc.stdout.split("\0")
    first = parts.index("\n")
    second = parts.index("\n", first + 1)
    return ModelConf(model, path, [a for a in parts[:first] if a], [a for a in parts[first + 1:second] if a],
                     dict(p.split("=", 1) for p in parts[second + 1:] if p))
