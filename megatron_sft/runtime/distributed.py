"""Process groups and Megatron parallel state for one run."""

from __future__ import annotations

import datetime
import logging
import os
import socket

import torch
import torch.distributed as dist

from megatron_sft.config import RunConfig

log = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_process_group(device: str, timeout_minutes: float = 10.0) -> None:
    """NCCL on GPU, gloo on CPU. Works under torchrun and as a single plain process."""
    if dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:  # a plain single process (no torchrun): any free port
        os.environ["MASTER_PORT"] = str(_free_port())
    dist.init_process_group(
        backend="nccl" if device == "cuda" else "gloo",
        rank=int(os.environ.get("RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        timeout=datetime.timedelta(minutes=timeout_minutes),
    )


def init_parallel_state(
    tp: int = 1, pp: int = 1, cp: int = 1, ep: int = 1, etp: int | None = None, vp: int | None = None,
    seed: int = 1234,
) -> None:
    """(Re)build Megatron's parallel groups for one layout and seed its RNG tracker."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=vp,
        context_parallel_size=cp,
        expert_model_parallel_size=ep,
        expert_tensor_parallel_size=etp,
    )
    model_parallel_cuda_manual_seed(seed)
    torch.manual_seed(seed) if torch.cuda.is_available() else torch.default_generator.manual_seed(seed)


def init_from_args(cfg: RunConfig, training: bool = False):
    """Device, layer spec, process group and parallel state for a run; returns the config with the device and
    the layer spec resolved."""
    from megatron_sft.runtime.device import setup_device
    from megatron_sft.runtime.versions import apex_available, check_versions

    check_versions()
    cfg = setup_device(cfg, training)
    log.info("device %s, transformer implementation %s, Apex %s", cfg.runtime.device, cfg.runtime.transformer_impl,
             "found" if apex_available() else "not installed (optional)")
    init_process_group(cfg.runtime.device, cfg.parallel.distributed_timeout_minutes)
    init_parallel_state(
        tp=cfg.parallel.tensor_model_parallel_size,
        pp=cfg.parallel.pipeline_model_parallel_size,
        cp=cfg.parallel.context_parallel_size,
        ep=cfg.parallel.expert_model_parallel_size,
        etp=cfg.parallel.expert_tensor_parallel_size,
        vp=cfg.parallel.virtual_pipeline_model_parallel_size,
        seed=cfg.training.seed,
    )
    return cfg


def collective_device() -> str:
    """Where a small tensor must live to be reduced: NCCL reduces device tensors only, gloo CPU ones."""
    return "cuda" if dist.is_initialized() and "nccl" in str(dist.get_backend()) else "cpu"


def any_rank(flag: bool) -> bool:
    """Whether `flag` holds on any rank (every rank gets the same answer, so all take the same branch)."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int32, device=collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def shutdown() -> None:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
