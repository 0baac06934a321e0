"""Token generation on Megatron model chunks at any TP/PP/EP layout, with or without a KV cache.

A batch is left-padded to its longest prompt. With the cache (Megatron-Core's StaticInferenceContext)
the padded prompts go through the model once (prefill), then every new token costs one step of
length 1. Padding is masked in attention, and RoPE only sees position differences, so a padded row
gives the same tokens as the same prompt alone. Without the cache, every step recomputes the whole
sequence (same masks), the reference the cache is checked against.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from megatron_sft.inference.comm import broadcast_tokens, chooser_rank, is_chooser
from megatron_sft.inference.logits import forward_logits
from megatron_sft.inference.sampling import SamplingSettings, choose_tokens


@dataclass(frozen=True)
class GenerationOptions:
    """Everything but the prompts. vocab_size: the real vocabulary (padded logits beyond it are ignored)."""

    max_new_tokens: int
    vocab_size: int
    stop_ids: tuple[int, ...] = ()
    pad_id: int = 0
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    use_cache: bool = True
    batch_size: int = 1
    device: str = "cpu"
    # False: batch only equal-length prompts, unpadded (Transformer Engine's causal attention ignores an explicit
    # mask; Mamba layers have none to read)
    masks_supported: bool = True


@dataclass
class Generation:
    """New tokens of one prompt; the stop token, when one ended it, is the last of them."""

    prompt_ids: list[int]
    tokens: list[int]
    stop_reason: str  # "stop" (a stop token) or "length" (max_new_tokens)


class _Batch:
    """Left-padded token buffer of one batch, with its padding and positions."""

    def __init__(self, prompts: list[list[int]], new_tokens: int, pad_id: int):
        self.longest = max(len(p) for p in prompts)
        total = self.longest + new_tokens
        self.tokens = torch.full((len(prompts), total), pad_id, dtype=torch.int64)
        self.pad = torch.ones((len(prompts), total), dtype=torch.bool)
        for row, prompt in enumerate(prompts):
            start = self.longest - len(prompt)
            self.tokens[row, start:self.longest] = torch.tensor(prompt, dtype=torch.int64)
            self.pad[row, start:] = False  # generated positions are real too
        # Position of each token within its own row (pads: 0); used by learned position embeddings.
        self.positions = (torch.cumsum(~self.pad, dim=1) - 1).clamp(min=0)
        self.any_pad = bool(self.pad.any())

    def mask(self, start: int, end: int) -> torch.Tensor | None:
        """Boolean [B,1,end-start,end], True = masked: causal plus padded keys. None when unpadded
        (Megatron then builds the causal mask itself, or needs none for a single query)."""
        if not self.any_pad:
            return None
        queries = torch.arange(start, end).unsqueeze(1)
        causal = torch.arange(end).unsqueeze(0) > queries
        return causal[None, None] | self.pad[:, None, None, :end]


def _forward(chunks, batch: _Batch, start: int, end: int, context, device: str) -> torch.Tensor | None:
    """Logits [B, 1, V] of position end-1 (last pipeline stage; None elsewhere)."""
    tokens = batch.tokens[:, start:end].to(device)
    positions = batch.positions[:, start:end].to(device)
    mask = batch.mask(start, end)
    mask = None if mask is None else mask.to(device)
    if context is None:
        last = torch.full((tokens.shape[0],), end - 1 - start, dtype=torch.int64, device=device)
        return forward_logits(chunks, tokens, positions, mask, select=last)
    if start > 0:
        context.enable_decode_mode()
    logits = forward_logits(chunks, tokens, positions, mask, inference_context=context)
    context.increment_sequence_len_offset(end - start)
    return logits


def _new_context(batch_size: int, max_len: int):
    from megatron.core.inference.contexts import StaticInferenceContext

    return StaticInferenceContext(batch_size, max_len)


def _generate_batch(chunks, prompts: list[list[int]], opts: GenerationOptions, src: int,
                    generator: torch.Generator | None) -> list[Generation]:
    batch = _Batch(prompts, opts.max_new_tokens, opts.pad_id)
    context = _new_context(len(prompts), batch.tokens.shape[1]) if opts.use_cache else None
    stops = set(opts.stop_ids)
    results = [Generation(list(p), [], "length") for p in prompts]
    done = [False] * len(prompts)
    end = batch.longest
    logits = _forward(chunks, batch, 0, end, context, opts.device)
    for step in range(opts.max_new_tokens):
        chosen = None
        if is_chooser(src):
            chosen = choose_tokens(logits[:, -1, : opts.vocab_size].float().cpu(), opts.sampling, generator)
        chosen = broadcast_tokens(chosen, len(prompts), src)
        for row, token in enumerate(chosen.tolist()):
            if not done[row]:
                results[row].tokens.append(token)
                if token in stops:
                    done[row], results[row].stop_reason = True, "stop"
        if all(done) or step == opts.max_new_tokens - 1:
            break
        # Finished rows keep being fed (their tokens are ignored): the batch moves in lockstep.
        batch.tokens[:, end] = chosen
        end += 1
        logits = _forward(chunks, batch, 0 if context is None else end - 1, end, context, opts.device)
    return results


def generate(chunks: list, prompts: list[list[int]], opts: GenerationOptions) -> list[Generation]:
    """Continue every prompt (token ids) in batches of opts.batch_size. Collective: call on every rank
    with the same prompts; each rank gets the same results."""
    if opts.max_new_tokens < 1:
        return [Generation(list(p), [], "length") for p in prompts]
    src = chooser_rank()
    generator = None
    if not opts.sampling.greedy:
        # One generator for the whole run: a seed gives the same samples for the same prompts and batches.
        generator = torch.Generator().manual_seed(opts.sampling.seed)
    results: list[Generation | None] = [None] * len(prompts)
    for rows in _batches(prompts, opts):
        for row, result in zip(rows, _generate_batch(chunks, [prompts[r] for r in rows], opts, src, generator)):
            results[row] = result
    return results


def _batches(prompts: list[list[int]], opts: GenerationOptions) -> list[list[int]]:
    """Row indices per batch: in order, or grouped by prompt length when padding cannot be masked."""
    if opts.masks_supported:
        groups = [list(range(len(prompts)))]
    else:
        by_length: dict[int, list[int]] = {}
        for row, prompt in enumerate(prompts):
            by_length.setdefault(len(prompt), []).append(row)
        groups = list(by_length.values())
    return [g[i:i + opts.batch_size] for g in groups for i in range(0, len(g), opts.batch_size)]
