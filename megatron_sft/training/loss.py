"""The one loss of this project: masked token cross-entropy over the whole global batch.

Each micro-batch returns the SUM of its supervised token losses and its supervised token count;
with `calculate_per_token_loss` Megatron adds the counts over micro-batches, DP and CP ranks and
divides the gradients by that total. So the value and the gradients are the token-weighted mean
over the global batch, whatever the layout or the micro-batch split.
"""

from __future__ import annotations

import math

import torch


def summed_loss_func(loss_mask: torch.Tensor):
    """`loss_func` for a loss already summed over supervised tokens (training/lm_head.py sums it itself)."""

    def loss_func(loss_sum: torch.Tensor):
        count = loss_mask.float().sum().to(loss_sum.device)
        # Reported as [sum, count]: micro-batches and ranks are added before dividing.
        return loss_sum, count.to(torch.int), {"lm loss": torch.stack([loss_sum.detach().float(), count])}

    return loss_func


def share_loss_func(counted: bool):
    """`loss_func` for a loss that is already this micro-batch's share of the global batch's mean (each token's
    weight divided by the global batch's total weight): Megatron is given a count of 1 for the whole step, on one
    micro-batch of one rank, so it divides by 1. (--loss-normalization sample: the weights are fractions, and
    Megatron adds counts as integers.)"""

    def loss_func(share: torch.Tensor):
        count = torch.tensor(1 if counted else 0, dtype=torch.int, device=share.device)
        return share, count, {"lm loss": torch.stack([share.detach().float(), count.float()])}

    return loss_func


def reduce_loss_reports(reports: list[dict], group=None) -> float:
    """Token-weighted mean of 'lm loss' reports over micro-batches and the given (DP×CP) group.

    NaN when no supervised token was seen. Every rank of `group` must call it (a collective).
    """
    total = torch.zeros(2, dtype=torch.float64)
    for report in reports:
        total += report["lm loss"].double().cpu()
    if group is not None and torch.distributed.get_world_size(group) > 1:
        torch.distributed.all_reduce(total, group=group)
    return (total[0] / total[1]).item() if total[1] > 0 else math.nan


def report_sums_everywhere(reports: list[dict], key: str, size: int) -> torch.Tensor:
    """The last stage's `key` reports (each `size` numbers) summed over micro-batches and DP x CP ranks, float64,
    on every rank (broadcast over the pipeline): an objective's figures beside the loss (DPO's, distillation's)."""
    from megatron.core import parallel_state as ps

    from megatron_sft.runtime.distributed import collective_device

    total = torch.zeros(size, dtype=torch.float64)
    if ps.is_pipeline_last_stage(ignore_virtual=True):
        for report in reports:
            total += report[key].double().cpu()
    total = total.to(collective_device())
    torch.distributed.all_reduce(total, group=ps.get_data_parallel_group(with_context_parallel=True))
    if ps.get_pipeline_model_parallel_world_size() > 1:
        torch.distributed.broadcast(total, src=ps.get_pipeline_model_parallel_last_rank(),
                                    group=ps.get_pipeline_model_parallel_group())
    return total.cpu()
