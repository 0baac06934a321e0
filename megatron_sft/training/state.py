"""Full training checkpoints: model, optimizer, scheduler, RNG, and where the run stands.

Layout per checkpoint (see checkpointing/names.py): the dist checkpoint holds 'model',
'optimizer' (distributed optimizer in the DP-reshardable form, so a run saved at DP=2 resumes
at DP=1) and 'rng_state'; train_state.json holds the iteration, consumed samples, the scheduler
state and the layout it was saved at.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from megatron_sft.config import RunConfig
from megatron_sft.checkpointing import layout, modelopt_state, names
from megatron_sft.checkpointing.checkpointer import Part
from megatron_sft.checkpointing.megatron_ckpt import load_chunk_states, model_sharded_state_dict
from megatron_sft.errors import UserError
from megatron_sft.runtime.distributed import collective_device
from megatron_sft.training.metrics import save_loss_curve

log = logging.getLogger(__name__)
TRAIN_STATE = names.TRAIN_STATE
OPTIM_METADATA = {"distrib_optim_sharding_type": "dp_reshardable"}


@dataclass
class TrainState:
    iteration: int = 0
    consumed_samples: int = 0
    optimizer_steps: int = 0  # successful steps: torch Adam's per-param 'step' is not in the checkpoint
    scheduler: dict = field(default_factory=dict)
    layout: dict = field(default_factory=dict)


def _layout() -> dict:
    from megatron.core import parallel_state as ps

    return {"tp": ps.get_tensor_model_parallel_world_size(), "pp": ps.get_pipeline_model_parallel_world_size(),
            "dp": ps.get_data_parallel_world_size(), "ep": ps.get_expert_model_parallel_world_size(),
            "cp": ps.get_context_parallel_world_size()}


def _rng_sharded_object():
    """Per (PP, TP) rank RNG states, replicated over DP and CP (Megatron-LM's convention)."""
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.mapping import ShardedObject
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    state = {"random": random.getstate(), "np": np.random.get_state(), "torch": torch.get_rng_state(),
             "tracker": get_cuda_rng_tracker().get_states()}
    pp, tp = ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank()
    shape = (ps.get_pipeline_model_parallel_world_size(), ps.get_tensor_model_parallel_world_size())
    replica = ps.get_data_parallel_rank(with_context_parallel=True)
    return ShardedObject("rng_state", state, shape, (pp, tp), replica_id=replica)


def _adapters_only(model):
    """A LoRA run saves and restores its adapters only (the base is frozen and named in lora.json)."""
    if model.lora is None:
        return None
    from megatron_sft.peft.lora import is_lora_key

    return is_lora_key


def _training_sharded_state(model, is_loading: bool, with_rng: bool) -> dict:
    """Model, optimizer (and RNG) sharded state; the optimizer's keys refer to the model's."""
    from megatron_sft.models.builder import unwrap

    state = model_sharded_state_dict([unwrap(c) for c in model.chunks], _adapters_only(model))
    flat_model = {k: v for chunk_state in state.values() for k, v in chunk_state.items()}
    state["optimizer"] = model.optimizer.sharded_state_dict(flat_model, is_loading=is_loading, metadata=OPTIM_METADATA)
    if with_rng:
        state["rng_state"] = _rng_sharded_object()
    return state


@dataclass
class TrainingContent:
    """What a training checkpoint holds (checkpointing/checkpointer.py saves it): model, optimizer and RNG sharded
    state; train_state.json; lora.json (LoRA); the modelopt state (quantized models); the loss curve; and, for
    --save-hf, the Hugging Face directory beside it."""

    model: object  # setup.TrainingModel
    state: TrainState
    cfg: RunConfig
    history: list  # (iteration, loss) of every step, for the loss curve
    eval_history: list
    source_history: dict = field(default_factory=dict)  # a blend's per-source (iteration, loss), for the curve

    def sharded_state(self) -> dict:
        return _training_sharded_state(self.model, False, True)

    def args_record(self) -> dict:
        return self.cfg.to_record()

    def parts(self) -> list[Part]:
        self.state.scheduler = self.model.scheduler.state_dict()
        self.state.layout = _layout()
        text = json.dumps(asdict(self.state), indent=1)
        parts = [Part(names.TRAIN_STATE, lambda d: (d / names.TRAIN_STATE).write_text(text)),
                 Part(names.LOSS_CURVE, lambda d: save_loss_curve(self.history, self.eval_history,
                                                                  d / names.LOSS_CURVE, self.source_history)),
                 Part(names.MODELOPT_STATE, lambda d: modelopt_state.save(self.model.chunks, d), collective=True)]
        if self.model.lora is not None:
            record = self.model.lora.record_text
            parts.append(Part(names.LORA_RECORD, lambda d: (d / names.LORA_RECORD).write_text(record)))
        return parts

    def estimated_bytes(self) -> int:
        return estimated_checkpoint_bytes(self.model)

    def estimated_hf_bytes(self) -> int:
        return estimated_hf_bytes(self.model, self.cfg.checkpoint.save_hf_dtype)

    def write_hf(self, ckpt_dir: Path) -> Path:
        """--save-hf: the Hugging Face directory beside the checkpoint just saved (training/hf_output.py)."""
        from megatron_sft.to_mcore import dtype_from_name
        from megatron_sft.training.hf_output import HfOutput, save_hf

        from megatron_sft.peft.hf_adapter import peft_unloadable

        cfg = self.cfg
        merged_only = bool(cfg.is_lora and peft_unloadable(cfg.lora.lora_target_modules,
                                                           bool(cfg.model.hybrid_override_pattern)))
        spec = HfOutput(dtype_from_name(cfg.checkpoint.save_hf_dtype), cfg.lora.merge_lora or merged_only,
                        self.model.lora, adapter=not merged_only)
        return save_hf(self.model.chunks, ckpt_dir, spec)


def estimated_checkpoint_bytes(model) -> int:
    """What the first save will write, before there is one to measure: each saved parameter once (LoRA: the
    adapters) in its dtype, plus Adam's two fp32 moments and, below fp32, its fp32 main copy."""
    from megatron.core import parallel_state as ps

    from megatron_sft.models.builder import unwrap

    owns_dense = ps.get_data_parallel_rank(with_context_parallel=True) == 0
    owns_experts = ps.get_expert_data_parallel_rank() == 0
    total = 0
    for chunk in model.chunks:
        for p in unwrap(chunk).parameters():
            if model.lora is not None and not p.requires_grad:
                continue  # the frozen base is not in a LoRA checkpoint
            if not (owns_experts if getattr(p, "allreduce", True) is False else owns_dense):
                continue  # a replica: saved by another rank
            optimizer = (8 + (4 if p.dtype != torch.float32 else 0)) if p.requires_grad else 0
            total += p.numel() * (p.element_size() + optimizer)
    counted = torch.tensor([total], dtype=torch.float64, device=collective_device())
    torch.distributed.all_reduce(counted)
    return int(counted.item())


def estimated_hf_bytes(model, dtype_name: str) -> int:
    """What --save-hf writes before there is one to measure: every weight once in the export dtype (a LoRA run
    writes far less: an upper bound then)."""
    from megatron.core import parallel_state as ps

    from megatron_sft.models.builder import unwrap

    per_param = {"fp32": 4, "bf16": 2, "fp16": 2}[dtype_name]
    owns_dense = ps.get_data_parallel_rank(with_context_parallel=True) == 0
    owns_experts = ps.get_expert_data_parallel_rank() == 0
    total = sum(p.numel() * per_param for chunk in model.chunks for p in unwrap(chunk).parameters()
                if (owns_experts if getattr(p, "allreduce", True) is False else owns_dense))
    counted = torch.tensor([total], dtype=torch.float64, device=collective_device())
    torch.distributed.all_reduce(counted)
    return int(counted.item())


def read_train_state(ckpt_dir: Path) -> TrainState | None:
    saved = layout.CheckpointDir(ckpt_dir).train_state()
    return None if saved is None else TrainState(**saved)


def _inner_optimizers(optimizer) -> list:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def _allocate_optimizer_state(optimizer) -> None:
    """A fresh torch Adam has no state, and Megatron's sharded_state_dict(is_loading=True) needs it
    (it reads the per-param 'step'). Allocate it with one zero-gradient step: every value is
    overwritten by the load that follows."""
    for opt in _inner_optimizers(optimizer):
        torch_opt = getattr(opt, "optimizer", None)
        if torch_opt is None or len(torch_opt.state) > 0:
            continue
        if hasattr(opt, "_init_optimizer_states_with_dummy_values"):
            opt._init_optimizer_states_with_dummy_values()
        elif getattr(opt, "init_state_fn", None) is not None:
            opt.init_state_fn(torch_opt, getattr(opt, "config", None))


def _restore_adam_step(optimizer, steps: int) -> None:
    """Megatron's checkpoint keeps Adam's moments but not torch Adam's per-param step counter;
    without this, bias correction restarts and the resumed run diverges from the straight one."""
    for opt in _inner_optimizers(optimizer):
        torch_opt = getattr(opt, "optimizer", None)
        if torch_opt is None:
            continue
        for param_state in torch_opt.state.values():
            if "step" in param_state:
                param_state["step"] = torch.full_like(torch.as_tensor(param_state["step"], dtype=torch.float32),
                                                      float(steps))


@torch.no_grad()
def load_training_checkpoint(ckpt_dir: Path, model, state: TrainState, cfg: RunConfig) -> None:
    """Restore everything TrainingContent saved into a freshly built model (the schedule's values as
    resume_check.load_scheduler decides)."""
    from megatron_sft.training.resume_check import load_scheduler

    from megatron.core import dist_checkpointing

    from megatron_sft.models.builder import unwrap

    saved, now = state.layout, _layout()
    saved.setdefault("cp", 1)  # checkpoints from before context parallelism existed
    problem = layout.resume_layout_problem(ckpt_dir, saved, now)  # checked at parse time too; this is the truth
    if problem:
        raise UserError(problem)
    _allocate_optimizer_state(model.optimizer)
    sharded = _training_sharded_state(model, is_loading=True, with_rng=saved.get("dp") == now["dp"])
    loaded = dist_checkpointing.load(sharded, str(ckpt_dir))
    chunks = [unwrap(c) for c in model.chunks]
    load_chunk_states(chunks, loaded, _adapters_only(model))
    model.optimizer.load_state_dict(loaded["optimizer"])
    _restore_adam_step(model.optimizer, state.optimizer_steps)
    load_scheduler(model.scheduler, state.scheduler, cfg, state.iteration)
    if "rng_state" in loaded:
        _set_rng(loaded["rng_state"])
    else:
        log.info("data-parallel size changed (%s -> %s): RNG states start fresh", saved.get("dp"), now["dp"])
    log.info("resumed %s at iteration %d (%d samples consumed)", ckpt_dir, state.iteration, state.consumed_samples)


def _set_rng(state: dict) -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    random.setstate(state["random"])
    np.random.set_state(state["np"])
    torch.set_rng_state(state["torch"])
    get_cuda_rng_tracker().set_states(state["tracker"])


def resume_point(cfg: RunConfig) -> tuple[Path, TrainState] | None:
    """The checkpoint to resume fully, or None when starting fresh (HF import, --finetune, weights-only)."""
    if cfg.checkpoint.load_format != "megatron":
        return None
    ckpt_dir, _ = layout.latest_checkpoint_dir(cfg.checkpoint.load, cfg.checkpoint.ckpt_step, deep=True)
    state = read_train_state(ckpt_dir)
    if cfg.checkpoint.finetune:
        return None
    if state is None:
        log.info("%s holds weights only (no %s): starting a new run from its weights, as with --finetune",
                 ckpt_dir, TRAIN_STATE)
        return None
    return ckpt_dir, state
