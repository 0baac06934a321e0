"""The table of applications (megatron_sft/apps.py) is the one start-up: every entry point and the launcher read it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from megatron_sft.apps import APPS, parse
from megatron_sft.errors import UserError
from megatron_sft.launch.scripts import SCRIPTS
from tests.conftest import REPO

SHIMS = {"examples/finetune.py": "run_finetune", "examples/dpo.py": "dpo", "examples/generate.py": "generate",
         "examples/mmlu.py": "mmlu",
         "examples/quantize.py": "quantize", "tools/convert.py": "convert"}


DPO_RUN = ["--train-iters", "3", "--lr", "1e-6", "--seq-length", "64", "--data-path", "SAME/config.json"]


def test_every_shell_script_is_an_app():
    assert set(SCRIPTS) <= set(APPS)


def test_entry_scripts_start_nothing_themselves():
    """examples/*.py and tools/convert.py hand over to the table: no start-up of their own."""
    for path in SHIMS:
        text = (REPO / path).read_text()
        assert "init_from_args" not in text and "parse_args" not in text and "setup_logging" not in text, path


def test_python_m_megatron_sft_lists_the_apps_and_runs_one():
    listed = subprocess.run([sys.executable, "-m", "megatron_sft"], capture_output=True, text=True, check=True)
    assert all(f"  {name}" in listed.stdout for name in APPS)
    helped = subprocess.run([sys.executable, "-m", "megatron_sft", "generate", "--help"], capture_output=True,
                            text=True, check=True)
    assert "usage: python -m megatron_sft generate" in helped.stdout and "--max-new-tokens" in helped.stdout
    unknown = subprocess.run([sys.executable, "-m", "megatron_sft", "train"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "unknown application 'train'" in unknown.stderr


@pytest.mark.parametrize(("app", "flags", "message"), [
    ("generate", ["--max-new-tokens", "0"], "--max-new-tokens 0: must be >= 1"),
    ("generate", ["--top-p", "1.5"], "--top-p 1.5: must be in (0, 1]"),
    ("mmlu", ["--fraction", "0"], "--fraction 0.0: must be in (0, 1]"),
    ("finetune", [], "give the run length: --train-iters, --train-samples or --train-epochs"),
    ("dpo", [*DPO_RUN, "--dpo-beta", "0"], "--dpo-beta 0.0 must be positive"),
    ("dpo", [*DPO_RUN, "--dpo-loss-type", "ipo", "--dpo-label-smoothing", "0.1"],
     "--dpo-label-smoothing applies to --dpo-loss-type sigmoid, not ipo"),
    ("convert", ["--save", "SAME", "--export-dtype", "bf16"], "saving there would write over it"),
])
def test_an_apps_checks_run_with_its_flags(tiny_models, app, flags, message):
    """Before any model or process group: the row's checks are part of parsing (the launcher runs the same)."""
    model = str(tiny_models["qwen3"])
    flags = [model if f == "SAME" else f.replace("SAME/", model + "/") for f in flags]
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        parse(app, ["--load", model, "--device", "cpu", *flags])
