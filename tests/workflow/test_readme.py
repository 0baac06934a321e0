"""The README's and docs/ pages' shell workflow sections name scripts, configs and variables that exist."""

from __future__ import annotations

import os
import re

from megatron_sft.launch.conf import conf_models
from tests.workflow.helpers import EXAMPLES, REPO

README = (REPO / "README.md").read_text()
# The README is a front door to docs/ (issue 33): the workflow's scripts, models and variable table are read there too.
DOCS = "\n".join([README, *(page.read_text() for page in sorted((REPO / "docs").glob("*.md")))])


def test_first_command_runs_the_embedded_default():
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    assert "examples/demo.sh" in first_block.splitlines()[1]
    assert os.access(EXAMPLES / "demo.sh", os.X_OK)


def test_scripts_named_in_the_readme_exist_and_are_executable():
    named = set(re.findall(r"examples/[\w/]+\.(?:sh|sbatch)", DOCS))
    assert {
        "examples/finetune.sh",
        "examples/generate.sh",
        "examples/mmlu.sh",
        "examples/convert.sh",
        "examples/slurm/finetune.sbatch",
    } <= named
    for path in named:
        assert os.access(REPO / path, os.X_OK), path


def test_models_named_in_the_readme_have_configs():
    models = set(conf_models())
    for model in re.findall(r"examples/\w+\.sh ([\w./-]+)", DOCS):
        assert model in models, model


def test_every_variable_in_the_table_is_read_by_a_script():
    table = DOCS.split("| variable | meaning (default) |", 1)[1].split("\n\n", 1)[0]
    variables = set(re.findall(r"`([A-Z][A-Z_]+)`", table))
    assert {"TP", "DP", "HF_MODEL_CKPT", "MLM_MODEL_SAVE", "MLM_RESUME", "LAUNCH_SCRIPT"} <= variables
    launch = REPO / "megatron_sft" / "launch"  # the scripts' variables are read there
    sources = "\n".join(p.read_text() for p in [*launch.glob("*.py"), *EXAMPLES.glob("*.sh")])
    for name in variables:
        assert re.search(rf"\b{name}\b", sources), name
