"""tools/prepare_data.py and training read the same data flags (one definition, same defaults): what the tool
prepared is what trains, and the tools give the same one-line errors as training."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.distributed.test_training import write_reversal_data
from tests.workflow.helpers import REPO

pytestmark = [pytest.mark.slow]


def run(script: str, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "WORLD_SIZE": "1"}
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def test_training_reuses_the_cache_prepare_data_built(tiny_models, tmp_path):
    data = write_reversal_data(tmp_path / "chat.jsonl", 40, seed=5)
    flags = ["--data-path", data, "--seq-length", "64", "--data-cache-dir", tmp_path / "cache"]  # no --split
    prepared = run("tools/prepare_data.py", "--tokenizer-model", tiny_models["qwen3"], *flags, "--no-progress")
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    cache = next(line.split(": ", 1)[1] for line in prepared.stdout.splitlines() if line.startswith("cache: "))
    trained = run("examples/finetune.py", "--load", tiny_models["qwen3"], *flags, "--device", "cpu",
                  "--train-iters", "1", "--global-batch-size", "1", "--lr", "1e-4", "--eval-iters", "0")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert f"data: reusing cache {cache}" in trained.stdout + trained.stderr


@pytest.mark.parametrize("script", ["tools/prepare_data.py", "tools/inspect_data.py"])
def test_data_tools_report_a_missing_tokenizer_in_one_line(tmp_path, script):
    data = write_reversal_data(tmp_path / "chat.jsonl", 4, seed=5)
    proc = run(script, "--tokenizer-model", "/nonexistent/tok", "--data-path", data, "--seq-length", "64")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "--tokenizer-model /nonexistent/tok" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_data_tools_need_the_packed_length(tmp_path):
    """--seq-length has no default (as in training): a cache packed at a length nobody chose would be useless."""
    data = write_reversal_data(tmp_path / "chat.jsonl", 4, seed=5)
    proc = run("tools/prepare_data.py", "--tokenizer-model", "tiny:qwen3", "--data-path", data)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: --seq-length is required: the packed sequence length, as training's (e.g. --seq-length 4096)"]
