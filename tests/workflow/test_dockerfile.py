"""The Dockerfile, without Docker: its base image is pinned, and its install steps keep the image's torch.

The Python step that writes the requirement and constraint files is run here for real (against this
environment instead of the image), so what pip would be asked to install is checked, not just the text.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
from packaging.requirements import Requirement

from tests.workflow.helpers import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()


def instructions() -> list[tuple[str, str]]:
    """(instruction, text) pairs with line continuations joined and heredoc bodies attached."""
    out, lines, i = [], DOCKERFILE.splitlines(), 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        while line.endswith("\\"):
            line = line[:-1] + " " + lines[i].strip()
            i += 1
        heredoc = re.search(r"<<'?(\w+)'?", line)
        if heredoc:
            body = []
            while lines[i].strip() != heredoc.group(1):
                body.append(lines[i])
                i += 1
            i += 1
            line += "\n" + "\n".join(body)
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest))
    return out


def test_base_image_is_ngc_pytorch_pinned_by_tag():
    froms = [text for keyword, text in instructions() if keyword == "FROM"]
    assert len(froms) == 1
    assert re.fullmatch(r"nvcr\.io/nvidia/pytorch:\d{2}\.\d{2}-py3", froms[0]), froms[0]


def test_install_steps_keep_the_image_torch(tmp_path):
    runs = [text for keyword, text in instructions() if keyword == "RUN"]
    pip_lines = [r for r in runs if "pip install" in r]
    assert len(pip_lines) == 2, pip_lines
    deps, package = pip_lines
    assert "PIP_CONSTRAINT=/tmp/image-constraints.txt" in deps and "-r /tmp/requirements.txt" in deps
    assert re.search(r"pip install [^&]*--no-deps -e \.( |$)", package), package
    assert not any("[gpu]" in r or re.search(r"\btorch\b[=<>]", r) for r in pip_lines)

    # Run the step that writes both files, with /tmp redirected to tmp_path.
    [writer] = [r for r in runs if r.startswith("<<")]
    script = writer.split("\n", 1)[1].replace("/tmp/", f"{tmp_path}/")
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    subprocess.run([sys.executable, "-"], input=script, text=True, cwd=tmp_path, check=True, capture_output=True)
    requirements = (tmp_path / "requirements.txt").read_text().split()
    constraints = (tmp_path / "image-constraints.txt").read_text().split()

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+, as in the image

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {Requirement(r).name for r in requirements}
    assert "torch" not in names
    for line in project["dependencies"]:
        assert Requirement(line).name == "torch" or line in requirements, line
    gpu = project["optional-dependencies"]["gpu"]
    try:
        import transformer_engine  # noqa: F401  the image has it: the script checks its range instead
    except ImportError:
        assert all(line in requirements for line in gpu), "without Transformer Engine, the gpu extra is installed"
    import torch

    assert f"torch=={torch.__version__}" in constraints, "torch is held at the installed build"


def test_dockerignore_keeps_the_context_small():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".git" in ignored and "**/__pycache__" in ignored
