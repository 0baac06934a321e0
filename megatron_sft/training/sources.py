"""Per-source figures of a blend (`--data-path 0.7 a.jsonl 0.3 b.jsonl`, or several files per split): each data
source's loss, supervised tokens and samples per step, training and validation.

The cache records each sample's source (sample_source.npy; the batch's sample_sources). Every token of this rank
gets its sample's source, in the order the loss sees the tokens (the joined, context-parallel-split stream,
[s, b]-flattened), so a pack that mixes sources is split exactly. Per micro-batch the last pipeline stage reports,
per source, [sum of weight x token loss, sum of weights, supervised tokens, samples]; they are summed over
micro-batches and DP x CP ranks like the loss itself (training/loss.py: report_sums_everywhere). A source's loss
is its weighted mean, so the sources' losses weighted by their weights average to the total.
"""

from __future__ import annotations

import torch

FIELDS = 4  # weighted loss sum, weight sum, supervised tokens, samples
KEY = "source metrics"


def token_sources(batch: dict, layout) -> torch.Tensor:
    """The source index of each of this rank's tokens ([s, b]-flattened, as select_supervised orders them); -1 for
    padding."""
    from megatron_sft.data.batch import _rows, join_rows, split_for_context_parallel

    b, s = batch["tokens"].shape
    source = torch.full((b, s), -1, dtype=torch.int64)
    real, padded = (_rows(batch[k], b) for k in ("cu_seqlens", "cu_seqlens_padded"))
    for row in range(b):
        for k, src in enumerate(batch["sample_sources"][row].tolist()):
            start = int(padded[row][k])
            source[row, start:start + int(real[row][k + 1] - real[row][k])] = src
    if layout.thd:
        source = split_for_context_parallel(join_rows({**batch, "tokens": source}), layout.cp_size,
                                            layout.cp_rank)["tokens"]
    return source.transpose(0, 1).reshape(-1)


def source_report(batch: dict, layout, n_sources: int, positions: torch.Tensor, token_losses: torch.Tensor,
                  token_weights: torch.Tensor) -> torch.Tensor:
    """[n_sources, FIELDS] of one micro-batch on this rank: the tokens at `positions` (of the [s, b]-flattened
    stream) with their losses and loss-mask weights; samples counted on context-parallel rank 0 only."""
    from megatron.core import parallel_state as ps

    out = torch.zeros(n_sources, FIELDS, dtype=torch.float64)
    source = token_sources(batch, layout).index_select(0, positions.cpu())
    weights = token_weights.detach().double().cpu()
    out[:, 0].index_add_(0, source, token_losses.detach().double().cpu() * weights)
    out[:, 1].index_add_(0, source, weights)
    out[:, 2].index_add_(0, source, (weights > 0).double())
    if ps.get_context_parallel_rank() == 0:
        for row in batch["sample_sources"]:
            out[:, 3].index_add_(0, row, torch.ones(len(row), dtype=torch.float64))
    return out


def with_source_report(loss_func, report: torch.Tensor):
    """`loss_func` whose report dict also carries this micro-batch's per-source sums."""

    def wrapped(output_tensor):
        loss, count, reports = loss_func(output_tensor)
        return loss, count, {**reports, KEY: report.reshape(-1)}

    return wrapped


def source_figures(reports: list[dict], names: list[str], prefix: str = "") -> dict:
    """loss/<name>, supervised_tokens/<name>, samples/<name> of the step (or validation), on every rank."""
    from megatron_sft.training.loss import report_sums_everywhere

    total = report_sums_everywhere(reports, KEY, len(names) * FIELDS).reshape(len(names), FIELDS)
    figures = {}
    for name, (loss, weight, tokens, samples) in zip(names, total.tolist()):
        figures[f"{prefix}loss/{name}"] = loss / weight if weight > 0 else float("nan")
        figures[f"{prefix}supervised_tokens/{name}"] = tokens
        figures[f"{prefix}samples/{name}"] = samples
    return figures
