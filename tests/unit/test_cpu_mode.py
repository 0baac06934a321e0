"""CPU mode: Megatron-Core's CUDA-only calls land on the CPU. Fails loudly if an upgrade breaks it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from megatron_sft.runtime import versions

# Run in a fresh interpreter: CPU mode patches torch.cuda for the whole process.
SCRIPT = textwrap.dedent(
    """
    import torch
    from megatron.core.tensor_parallel import random as mc_random
    from megatron.core.transformer.moe import moe_utils  # noqa: F401
    for name in ("_get_cuda_rng_state", "_set_cuda_rng_state", "get_cuda_rng_tracker",
                 "model_parallel_cuda_manual_seed"):
        assert hasattr(mc_random, name), f"megatron.core.tensor_parallel.random.{name} is gone"
    from megatron_sft.runtime import cpu_mode
    cpu_mode.enable()
    cpu_mode.enable()  # idempotent
    assert torch.empty(3, device="cuda").device.type == "cpu"
    assert torch.zeros(2).cuda().device.type == "cpu"
    assert torch.zeros(2).to("cuda:0").device.type == "cpu"
    assert torch.empty(2, device=torch.cuda.current_device()).device.type == "cpu"
    assert torch.zeros(2).type() == "torch.cuda.FloatTensor"
    assert torch.zeros(2, dtype=torch.bfloat16).type() == "torch.cuda.BFloat16Tensor"
    assert torch.zeros(2).type(torch.float64).dtype == torch.float64  # conversions untouched
    torch.cuda.manual_seed(3)  # must not recurse into torch.manual_seed
    import os
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29531")
    dist.init_process_group("gloo", rank=0, world_size=1)
    from megatron.core import parallel_state
    parallel_state.initialize_model_parallel(1, 1)
    mc_random.model_parallel_cuda_manual_seed(123)
    tracker = mc_random.get_cuda_rng_tracker()
    with tracker.fork():
        a = torch.rand(4)
    with tracker.fork():
        b = torch.rand(4)
    assert not torch.equal(a, b), "the model-parallel RNG stream does not advance"
    torch.cuda.synchronize(); torch.cuda.current_stream().wait_stream(torch.cuda.Stream())
    print("CPU-MODE-OK")
    """
)


def test_cpu_mode_rewrites_cuda_calls():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert "CPU-MODE-OK" in proc.stdout, proc.stderr[-4000:]


def test_installed_versions_are_the_proven_ones():
    assert versions.version_mismatches() == [], "CPU mode / conversion were proven with other versions"


def test_version_mismatch_is_reported(monkeypatch):
    monkeypatch.setitem(versions.PROVEN, "megatron-core", "0.0.1")
    lines = versions.version_mismatches()
    assert len(lines) == 1 and "megatron-core" in lines[0] and "0.0.1" in lines[0]
