"""Choosing the next token from logits: greedy, or sampling with temperature, top-k and top-p."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_sft.config import RunConfig
from megatron_sft.arguments.inference import check_sampling


@dataclass(frozen=True)
class SamplingSettings:
    """How tokens are chosen. temperature 0 means greedy (top-k / top-p are then ignored)."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 1234

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def check(self) -> None:
        check_sampling(self.temperature, self.top_k, self.top_p)

    @classmethod
    def from_config(cls, cfg: RunConfig) -> SamplingSettings:
        settings = cls(temperature=float(cfg.inference.temperature), top_k=cfg.inference.top_k,
                       top_p=cfg.inference.top_p, seed=int(cfg.training.seed))
        settings.check()
        return settings


def _filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def _filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches p (always at least one)."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    # A token is dropped when the tokens ranked above it already reach p.
    drop_sorted = (torch.cumsum(probs, dim=-1) - probs) >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def choose_tokens(logits: torch.Tensor, settings: SamplingSettings, generator: torch.Generator | None) -> torch.Tensor:
    """Next token per row of `logits` [B, V] (V: the real vocabulary only), int64 [B]."""
    if settings.greedy:
        return torch.argmax(logits, dim=-1)
    scaled = logits.float() / settings.temperature
    if settings.top_k is not None:
        scaled = _filter_top_k(scaled, settings.top_k)
    if settings.top_p is not None and settings.top_p < 1.0:
        scaled = _filter_top_p(scaled, settings.top_p)
    probs = torch.softmax(scaled, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
