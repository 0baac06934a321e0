"""One training or evaluation step through Megatron's forward-backward schedules."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch

from megatron_sft.models.builder import unwrap
from megatron_sft.training.inputs import PackedLayout, model_inputs
from megatron_sft.training.lm_head import (
    at_positions,
    hidden_states_instead_of_logits,
    select_supervised,
    supervised_positions,
    weighted_token_loss,
)
from megatron_sft.training.loss import reduce_loss_reports, share_loss_func, summed_loss_func
from megatron_sft.training.neftune import Neftune, embedding_noise, noisy_embeddings
from megatron_sft.training.sources import source_report, with_source_report


def input_noise(batch: dict, gpt, neftune: Neftune | None, layout: PackedLayout, sequence_parallel: bool):
    """NEFTune's noise for this micro-batch on a stage with the embedding; None without NEFTune or the embedding."""
    if neftune is None or not gpt.pre_process:
        return None
    return embedding_noise(batch, neftune, gpt.config.hidden_size, layout, sequence_parallel)


def make_forward_step(layout: PackedLayout, lm_head_chunk_size: int = 0, sequence_parallel: bool = False,
                      neftune: Neftune | None = None, total_weight: float | None = None, n_sources: int = 0):
    """Megatron's forward_step_func. On the last pipeline stage with a chunk size, the loss comes from the
    supervised tokens' hidden states (training/lm_head.py); otherwise the model's per-token losses are masked.
    `neftune`: noise on the input embeddings (training/neftune.py). `total_weight`: the global batch's summed
    loss mask, when its weights are fractions (--loss-normalization sample): each micro-batch returns its share of
    the mean, counted once per step (the batch flagged count_step: counted_batches). `n_sources` > 1: each
    micro-batch also reports its per-source sums (training/sources.py)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def forward_step(data_iterator, model):
        raw = next(data_iterator)
        b = model_inputs(raw, layout, device)
        args = (b["tokens"], b["position_ids"], b["attention_mask"])
        gpt = unwrap(model)
        mask = b["loss_mask"] if total_weight is None else b["loss_mask"] / total_weight
        with noisy_embeddings(gpt, input_noise(raw, gpt, neftune, layout, sequence_parallel)):
            if lm_head_chunk_size and gpt.post_process:
                with hidden_states_instead_of_logits(gpt) as output_layer:
                    hidden = model(*args, packed_seq_params=b["packed_seq_params"])
            else:
                hidden = model(*args, labels=b["labels"], packed_seq_params=b["packed_seq_params"])
        if not gpt.post_process:
            return hidden, summed_loss_func(mask)  # the next stage's input (Megatron calls no loss_func here)
        if lm_head_chunk_size:
            selected, targets, weights, positions = select_supervised(hidden, b["labels"], mask, sequence_parallel)
            per_token = torch.empty(len(positions), dtype=torch.float32, device=hidden.device) if n_sources else None
            loss = weighted_token_loss(selected, output_layer["weight"], targets, weights, lm_head_chunk_size,
                                       per_token)
        else:  # the model's per-token losses [b, s]
            loss = (hidden.float() * mask.to(hidden.device).float()).sum()
            if n_sources:  # the supervised tokens' losses, in the chunked head's order, for the figures
                positions = supervised_positions(b["loss_mask"])
                per_token = at_positions(hidden, positions).detach().float()
        if total_weight is None:
            loss_func = summed_loss_func(mask)
        else:
            loss_func = share_loss_func(bool(raw.get("count_step")) and _first_context_parallel_rank())
        if n_sources:
            raw_weights = at_positions(b["loss_mask"], positions)
            loss_func = with_source_report(loss_func, source_report(raw, layout, n_sources, positions, per_token,
                                                                    raw_weights))
        return loss, loss_func

    return forward_step


def _first_context_parallel_rank() -> bool:
    from megatron.core import parallel_state as ps

    return ps.get_context_parallel_rank() == 0


def counted_batches(batches: list[dict]) -> list[dict]:
    """The step's micro-batches, the first one on data-parallel rank 0 flagged count_step (see share_loss_func)."""
    from megatron.core import parallel_state as ps

    return [dict(b, count_step=(k == 0 and ps.get_data_parallel_rank() == 0)) for k, b in enumerate(batches)]


def total_loss_weight(batches: list[dict]) -> float:
    """The summed loss mask of the global batch (this rank's micro-batches, summed over data parallelism)."""
    from megatron.core import parallel_state as ps

    from megatron_sft.runtime.distributed import collective_device

    total = torch.tensor([sum(float(b["loss_mask"].double().sum()) for b in batches)], dtype=torch.float64,
                         device=collective_device())
    torch.distributed.all_reduce(total, group=ps.get_data_parallel_group())
    return float(total[0])


@dataclass
class StepResult:
    loss: float  # token-weighted mean over the global batch (NaN on no rank: broadcast to all)
    grad_norm: float | None
    skipped: bool  # fp16 overflow: no update this step
    lr: float
    reports: list = field(default_factory=list, repr=False)  # the last stage's per-micro-batch reports


def _data_iterators(batches: list, num_chunks: int):
    """The same micro-batches for every virtual pipeline chunk."""
    if num_chunks == 1:
        return iter(batches)
    return [iter(batches) for _ in range(num_chunks)]


def _loss_everywhere(reports: list[dict]) -> float:
    """The global loss, computed on the last pipeline stage and broadcast to every rank."""
    from megatron.core import parallel_state as ps

    value = torch.tensor([math.nan], dtype=torch.float64)
    if ps.is_pipeline_last_stage(ignore_virtual=True):
        value[0] = reduce_loss_reports(reports, ps.get_data_parallel_group(with_context_parallel=True))
    if ps.get_pipeline_model_parallel_world_size() > 1:
        torch.distributed.broadcast(value, src=ps.get_pipeline_model_parallel_last_rank(),
                                    group=ps.get_pipeline_model_parallel_group())
    return float(value[0])


def run_schedule(model, batches: list, seq_length: int, micro_batch_size: int, forward_only: bool,
                 forward_step=None) -> list:
    """Megatron's schedule over `batches`; `forward_step`: another objective's (DPO), else the SFT loss's."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    seq_length, micro_batch_size = model.layout.schedule_shape(seq_length, micro_batch_size)
    if forward_step is None:
        forward_step = make_forward_step(model.layout, model.lm_head_chunk_size, model.config.sequence_parallel)
    return get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=_data_iterators(batches, len(model.chunks)),
        model=model.chunks,
        num_microbatches=len(batches),
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )


def train_step(model, batches: list, seq_length: int, micro_batch_size: int, global_batch_size: int,
               forward_step=None) -> StepResult:
    """Forward/backward over all micro-batches of one global batch, then the optimizer step."""
    for chunk in model.chunks:
        chunk.zero_grad_buffer()
    model.optimizer.zero_grad()
    reports = run_schedule(model, batches, seq_length, micro_batch_size, forward_only=False,
                           forward_step=forward_step)
    updated, grad_norm, _ = model.optimizer.step()
    if updated:
        model.scheduler.step(increment=global_batch_size)
    lr = model.optimizer.param_groups[0]["lr"]
    return StepResult(_loss_everywhere(reports), grad_norm, not updated, lr, reports)
