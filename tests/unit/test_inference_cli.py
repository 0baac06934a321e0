"""Bad input to examples/generate.py and examples/mmlu.py ends as one clear line (exit 2), before any model loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _run(script: str, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "RANK": "0", "WORLD_SIZE": "1"}
    cmd = [sys.executable, str(REPO / "examples" / script), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=REPO, check=False)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_malformed_prompts_file_line(tiny_models, tmp_path):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "ok"}]}\n{"messages": [}\n')
    line = _one_error_line(_run("generate.py", ["--load", tiny_models["qwen3"], "--prompts-file", bad]))
    assert f"{bad}:2: not valid JSON" in line


def test_missing_mmlu_directory(tiny_models, tmp_path):
    missing = tmp_path / "no_mmlu"
    line = _one_error_line(_run("mmlu.py", ["--load", tiny_models["qwen3"], "--mmlu-dataset", missing]))
    assert f"--mmlu-dataset {missing}: no such directory" in line


@pytest.mark.parametrize("script", ["generate.py", "mmlu.py"])
def test_checkpoint_that_does_not_match_the_flags(tiny_models, script):
    line = _one_error_line(_run(script, ["--load", tiny_models["qwen3"], "--num-layers", "8"]))
    assert "--num-layers 8" in line and "num_hidden_layers=4" in line


def test_bad_sampling_flag(tiny_models):
    line = _one_error_line(_run("generate.py", ["--load", tiny_models["qwen3"], "--top-p", "0"]))
    assert "--top-p 0.0" in line
