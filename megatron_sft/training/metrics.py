"""Throughput, MFU, and where the numbers go: log lines, TensorBoard, wandb, a PNG loss curve."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from megatron_sft.config import RunConfig
from megatron_sft.errors import UserError

log = logging.getLogger(__name__)

# Dense bf16 peak of GPUs whose figure is known (FLOP/s); MFU is reported only for these.
GPU_PEAK_BF16 = {"H100": 989e12, "H200": 989e12}


def gpu_peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in GPU_PEAK_BF16.items() if key in name), None)


def sample_lengths(batch: dict) -> list[int]:
    """Real sample lengths of a packed micro-batch, from cu_seqlens; a row's trailing padding
    segment (num_padding[row] > 0) is not a sample."""
    cu = batch["cu_seqlens"]
    rows = cu if isinstance(cu, list) else [cu]
    padding = batch.get("num_padding", torch.zeros(len(rows), dtype=torch.int64)).reshape(-1).tolist()
    lengths = []
    for row, pad in zip(rows, padding):
        bounds = row.tolist()
        row_lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
        lengths += row_lengths[:-1] if pad else row_lengths
    return lengths


def training_flops(lengths: list[int], cfg: RunConfig) -> float:
    """Megatron's causal FLOPs (forward + backward = 3x forward) for samples of these lengths."""
    h, layers = cfg.model.hidden_size, cfg.model.num_layers
    q = cfg.model.num_attention_heads * cfg.model.kv_channels
    kv = 2 * cfg.model.num_query_groups * cfg.model.kv_channels
    ffn = cfg.model.ffn_hidden_size * (3 if cfg.model.swiglu else 2)
    if cfg.model.num_experts:
        ffn = cfg.model.moe_ffn_hidden_size * 3 * cfg.model.moe_router_topk
    per_token = 2 * layers * (h * (q + kv) + q * h + h * ffn) + 2 * h * cfg.model.padded_vocab_size
    # causal attention: scores and weighted sum, 2 matmuls, each L*(L+1)/2 dot products of size q
    attention = sum(2 * 2 * layers * q * n * (n + 1) / 2 for n in lengths)
    return 3.0 * (per_token * sum(lengths) + attention)


class Reporters:
    """TensorBoard and wandb, only on the rank that logs, only when asked for."""

    def __init__(self, cfg: RunConfig, is_logging_rank: bool):
        self.tb = self.wandb = None
        if not is_logging_rank:
            return
        if cfg.logging.tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise UserError("--tensorboard-dir needs tensorboard: pip install 'megatron_sft[loggers]'") from e
            self.tb = SummaryWriter(cfg.logging.tensorboard_dir)
        if cfg.logging.wandb_project:
            try:
                import wandb
            except ImportError as e:
                raise UserError("--wandb-project needs wandb: pip install wandb") from e
            self.wandb = wandb.init(project=cfg.logging.wandb_project, name=cfg.logging.wandb_exp_name or None)

    def scalars(self, values: dict, step: int) -> None:
        if self.tb:
            for k, v in values.items():
                if v is not None:
                    self.tb.add_scalar(k, v, step)
        if self.wandb:
            self.wandb.log({k: v for k, v in values.items() if v is not None}, step=step)

    def close(self) -> None:
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()


def save_loss_curve(history: list[tuple[int, float]], eval_history: list[tuple[int, float]], path: Path,
                    sources: dict | None = None) -> None:
    """The training and validation losses against the iteration; `sources`: a blend's per-source training losses
    ({name: [(iteration, loss), ...]}), dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if history:
        ax.plot(*zip(*history), label="train loss")
    if eval_history:
        ax.plot(*zip(*eval_history), "o-", label="validation loss")
    for name, points in (sources or {}).items():
        if points:
            ax.plot(*zip(*points), "--", linewidth=1, label=f"train loss: {name}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
