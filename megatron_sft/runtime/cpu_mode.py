"""Run Megatron-Core's real code paths on a machine without CUDA.

Megatron-Core asks for CUDA directly in many places (``torch.cuda.current_device()``,
``device="cuda"`` literals, ``.cuda()``, streams and events, CUDA RNG state, and
``param.type() == 'torch.cuda.FloatTensor'`` checks in the optimizers). This module makes
those calls land on the CPU, so laptops and CI run the same schedules, DDP, distributed
optimizer and dist_checkpointing code as a GPU cluster, over gloo.

It is switched on once per process by :func:`enable` (only when CUDA is absent or
``--device cpu`` asks for it) and was checked against the megatron-core version in
``runtime.versions.PROVEN``; ``tests/unit/test_cpu_mode.py`` fails loudly when an upgrade
breaks it.
"""

from __future__ import annotations

import contextlib
import types

import torch
from torch.overrides import TorchFunctionMode

_ENABLED = False
_CPU = torch.device("cpu")

# CPU tensor type names -> the CUDA names Megatron's optimizers compare against.
_CUDA_TYPE_NAMES = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
}


def _to_cpu_device(device):
    """Map any CUDA device spec (``'cuda'``, ``'cuda:1'``, ``torch.device('cuda')``, an int) to CPU."""
    if isinstance(device, int) and not isinstance(device, bool):
        return torch.device("cpu")
    if isinstance(device, str) and device.startswith("cuda"):
        return torch.device("cpu")
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    return device


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA device arguments to CPU for every torch function and tensor method."""

    def __torch_function__(self, func, types_, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return _CUDA_TYPE_NAMES.get(name, name)
        if "device" in kwargs:
            kwargs["device"] = _to_cpu_device(kwargs["device"])
        if func in (torch.Tensor.to, torch.Tensor.new_empty) and len(args) > 1:
            args = (args[0], _to_cpu_device(args[1]), *args[2:])
        return func(*args, **kwargs)


class _Dummy:
    """Stand-in for torch.cuda.Stream / Event / nvtx ranges: every method is a no-op."""

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        return lambda *a, **k: None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def elapsed_time(self, other) -> float:
        return 0.0

    def query(self) -> bool:
        return True


def _cpu_manual_seed(seed: int) -> None:
    # torch.manual_seed itself calls torch.cuda.manual_seed_all -> recursion; seed directly.
    torch.default_generator.manual_seed(int(seed))


def _get_rng_state(device="cuda", clone=False, graph_safe=False):
    return torch.default_generator.get_state()


def _set_rng_state(new_state, device=-1, graph_safe=False):
    torch.default_generator.set_state(new_state)


def _patch_torch_cuda() -> None:
    cuda = torch.cuda
    # A device object, not the index 0: code that runs outside the function mode (autograd's
    # backward of Megatron's custom Functions) passes it straight to torch.empty(device=...).
    cuda.current_device = lambda: _CPU
    cuda.device_count = lambda: 0
    cuda.set_device = lambda *a, **k: None
    cuda.synchronize = lambda *a, **k: None
    cuda.empty_cache = lambda: None
    cuda.Stream = _Dummy
    cuda.Event = _Dummy
    cuda.current_stream = lambda *a, **k: _Dummy()
    cuda.default_stream = lambda *a, **k: _Dummy()
    cuda.stream = lambda *a, **k: contextlib.nullcontext()
    cuda.manual_seed = _cpu_manual_seed
    cuda.manual_seed_all = _cpu_manual_seed
    cuda.get_rng_state = lambda *a, **k: torch.default_generator.get_state()
    cuda.set_rng_state = lambda state, *a, **k: torch.default_generator.set_state(state)
    cuda.memory_allocated = lambda *a, **k: 0
    cuda.max_memory_allocated = lambda *a, **k: 0
    cuda.memory_reserved = lambda *a, **k: 0
    cuda.nvtx = types.SimpleNamespace(range_push=lambda *a, **k: None, range_pop=lambda *a, **k: None,
                                      range=lambda *a, **k: contextlib.nullcontext())


def _patch_megatron() -> None:
    from megatron.core.tensor_parallel import random as mc_random
    from megatron.core.transformer.moe import moe_utils

    mc_random._get_cuda_rng_state = _get_rng_state
    mc_random._set_cuda_rng_state = _set_rng_state
    # moe_utils names te_general_gemm only when Transformer Engine imported; the router
    # checks it for None, so define it as absent.
    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None


def enable() -> None:
    """Switch this process into CPU mode (idempotent). Call before building any model."""
    global _ENABLED
    if _ENABLED:
        return
    _patch_torch_cuda()
    _patch_megatron()
    # Entered for the life of the process; TorchFunctionMode is thread-local, so threads
    # that touch devices (none in the paths we use) would need their own.
    _CudaToCpuMode().__enter__()
    _ENABLED = True

