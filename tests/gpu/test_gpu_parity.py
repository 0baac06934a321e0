"""GPU tier: the CUDA path (NCCL, fused kernels where their kernels import, Transformer Engine when
installed, the packed attention) against transformers and against Megatron's own attention."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

# fp32 on CUDA may use TF32 matmuls: looser than the CPU's 1e-4; bf16 logits carry ~3 significant digits.
TOL = {"fp32": 1e-3, "bf16": 5e-2}


@pytest.fixture(scope="module")
def parity(tiny_models, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu") / "parity.json"
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "gpu" / "workers" / "parity.py"),
                           "--model", str(tiny_models["qwen3"]), "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_logits_match_transformers_on_cuda(parity, dtype):
    checked = {k: v for k, v in parity.items() if k.startswith("transformers/") and k.endswith(dtype)}
    assert checked, parity
    for name, diff in checked.items():
        assert diff <= TOL[dtype], f"{name}: max abs logits diff {diff}"


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_packed_samples_equal_each_sample_alone_on_cuda(parity, dtype):
    assert parity[f"packed_vs_alone/{dtype}"] <= TOL[dtype]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_packed_attention_equals_local_backend_on_cuda(parity, dtype):
    assert parity[f"auto_vs_local/{dtype}"] <= TOL[dtype]
