"""Bad input to an entry script: one clear line, exit code 2, and no heavy import before it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIGS = json.loads((REPO / "tests" / "data" / "hf_model_configs.json").read_text())
HEAVY = ("megatron", "modelopt", "transformers", "torch")


def hf_dir(root: Path, **changes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({**CONFIGS["Qwen/Qwen3-0.6B"], **changes}))
    (root / "model.safetensors").write_bytes(b"stand-in")
    return root


def run_convert(args: list[str], world_size: int = 1) -> tuple[int, list[str], set[str]]:
    """Run tools/convert.py with -X importtime; returns (exit code, non-import stderr lines, modules imported)."""
    env = {**os.environ, "WORLD_SIZE": str(world_size), "RANK": "0"}
    proc = subprocess.run([sys.executable, "-X", "importtime", str(REPO / "tools" / "convert.py"), *args],
                          capture_output=True, text=True, env=env, timeout=120)
    lines = proc.stderr.splitlines()
    imported = {line.split("|")[-1].strip().split(".")[0] for line in lines if line.startswith("import time:")}
    return proc.returncode, [line for line in lines if not line.startswith("import time:")], imported


def truncated_checkpoint(root: Path) -> Path:
    (root / "iter_0000010").mkdir(parents=True)
    (root / "latest_checkpointed_iteration.txt").write_text("10")
    return root


CASES = {
    "missing checkpoint": (lambda t: ["--load", str(t / "nope")], 1, ["nope", "no such directory"]),
    "truncated checkpoint": (
        lambda t: ["--load", str(truncated_checkpoint(t / "ck"))], 1, ["iter_0000010", "metadata.json"]),
    "unsupported architecture": (
        lambda t: ["--load", str(hf_dir(t / "gpt2", architectures=["GPT2LMHeadModel"]))], 1,
        ["GPT2LMHeadModel", "config.json", "Qwen3ForCausalLM"]),
    "contradicting --num-layers": (
        lambda t: ["--load", str(hf_dir(t / "q")), "--num-layers", "8"], 1, ["--num-layers", "8", "28"]),
    "TP=3 with 8 query groups": (
        # 24 heads and a vocabulary divisible by 3, so the query groups are the only problem
        lambda t: ["--load", str(hf_dir(t / "q", num_attention_heads=24, vocab_size=152064)),
                   "--tensor-model-parallel-size", "3"], 3,
        ["--tensor-model-parallel-size", "3", "8", "1, 2, 4"]),
    "vocabulary TP does not divide": (
        lambda t: ["--load", str(hf_dir(t / "q", vocab_size=151937)), "--tensor-model-parallel-size", "2"], 2,
        ["151937", "--tensor-model-parallel-size"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_before_heavy_work(tmp_path, case):
    make_args, world_size, must_mention = CASES[case]
    code, lines, imported = run_convert([*make_args(tmp_path), "--save", str(tmp_path / "out")], world_size)
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for word in must_mention:
        assert word in lines[0], f"{word!r} not in: {lines[0]}"
    assert not imported & set(HEAVY), f"imported before the error: {sorted(imported & set(HEAVY))}"


def test_under_the_torchrun_wrapper_each_rank_hands_its_error_to_the_wrapper(tmp_path):
    """The workers print nothing themselves (torchrun may kill rank 0 before it could); the wrapper prints the
    lowest rank's lines once."""
    from megatron_sft.cli import ERRORS_DIR_ENV
    from megatron_sft.launch.torchrun import worker_errors

    code = "from megatron_sft.cli import run_main\nfrom megatron_sft.arguments import parse_args\n" \
           "run_main(lambda: parse_args(['--load', '/nope/x']))"
    for rank in ("1", "0"):
        env = {**os.environ, "RANK": rank, ERRORS_DIR_ENV: str(tmp_path)}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env)
        assert (out.returncode, out.stderr) == (2, ""), out.stderr
    assert sorted(os.listdir(tmp_path)) == ["rank000000", "rank000001"]
    assert worker_errors(str(tmp_path)) == [
        "error: --load /nope/x: no such directory; give a Hugging Face model directory or a Megatron checkpoint"]
