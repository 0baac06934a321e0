"""GPU tier: the CUDA path (NCCL, fused kernels where safe, Transformer Engine) against transformers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_logits_match_transformers_on_cuda(tiny_models, tmp_path):
    out = tmp_path / "parity.json"
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "gpu" / "workers" / "parity.py"),
                           "--model", str(tiny_models["qwen3"]), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for impl, diff in json.loads(out.read_text()).items():
        assert diff <= 1e-3, f"{impl}: max abs logits diff {diff}"  # TF32/cuBLAS: looser than the CPU 1e-4
