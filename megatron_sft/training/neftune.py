"""NEFTune: uniform noise on the input embeddings while training (Jain et al. 2023; transformers' formula).

transformers adds `uniform(-m, m)` with m = alpha / sqrt(L x hidden) to the embedding output of a batch of length L.
In a pack L is each conversation's own length: every sample gets the noise it would get alone, so packing does not
change what a sample sees. Its noise comes from a generator seeded by (--seed, the sample's id, the iteration) and is
drawn with the [1, L, hidden] shape transformers draws for that sample alone: the same noise at every parallel
layout, on a resume, and in transformers' own hook given that seed (tests/distributed/test_loss_control.py). Padding
(a pack's tail, context-parallel fill) gets none. Validation and evaluation run without noise.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Neftune:
    alpha: float
    seed: int  # --seed
    iteration: int  # the step being computed (1-based)


def sample_seed(seed: int, sample_id: int, iteration: int) -> int:
    """The generator seed of one sample's noise at one iteration."""
    digest = hashlib.sha256(f"neftune {seed} {sample_id} {iteration}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def sample_noise(neftune: Neftune, sample_id: int, length: int, hidden: int) -> torch.Tensor:
    """[1, length, hidden] fp32: what transformers' NEFTune hook adds to that sample alone, its RNG seeded so."""
    generator = torch.Generator().manual_seed(sample_seed(neftune.seed, sample_id, neftune.iteration))
    magnitude = float(neftune.alpha / torch.tensor(float(length * hidden)).sqrt())  # fp32, as transformers rounds it
    return torch.zeros(1, length, hidden).uniform_(-magnitude, magnitude, generator=generator)


def pack_noise(batch: dict, neftune: Neftune, hidden: int) -> torch.Tensor:
    """[B * S, hidden]: each real sample's noise at its positions of the collated micro-batch, zero elsewhere."""
    from megatron_sft.data.batch import _rows

    b, s = batch["tokens"].shape
    noise = torch.zeros(b * s, hidden)
    real, padded = (_rows(batch[k], b) for k in ("cu_seqlens", "cu_seqlens_padded"))
    for row in range(b):
        ids = [int(i) for i in batch["sample_ids"][row]]
        for k, sample in enumerate(ids):
            length = int(real[row][k + 1] - real[row][k])
            start = row * s + int(padded[row][k])
            noise[start:start + length] = sample_noise(neftune, sample, length, hidden)[0]
    return noise


def embedding_noise(batch: dict, neftune: Neftune, hidden: int, layout, sequence_parallel: bool) -> torch.Tensor:
    """The noise in the layout of this rank's embedding output: [T/CP, 1, h] for the THD stream, [S, B, h] otherwise;
    under sequence parallelism this TP rank's share of the sequence."""
    from megatron_sft.data.batch import join_rows, split_for_context_parallel

    noise = pack_noise(batch, neftune, hidden)
    b, s = batch["tokens"].shape
    index = torch.arange(b * s).reshape(b, s)
    if layout.thd:  # the token order of model_inputs: rows joined, then this CP rank's share
        index = split_for_context_parallel(join_rows({**batch, "tokens": index}), layout.cp_size,
                                           layout.cp_rank)["tokens"].reshape(-1, 1)
    else:
        index = index.t()
    noise = noise[index]  # [tokens, rows, h]
    if sequence_parallel:
        from megatron.core import parallel_state as ps

        noise = noise.chunk(ps.get_tensor_model_parallel_world_size())[ps.get_tensor_model_parallel_rank()]
    return noise


@contextmanager
def noisy_embeddings(gpt_model, noise: torch.Tensor | None):
    """Inside, the model's embedding output has `noise` added (nothing on stages without the embedding)."""
    embedding = getattr(gpt_model, "embedding", None) if getattr(gpt_model, "pre_process", False) else None
    if noise is None or embedding is None:
        yield
        return

    def add(module, inputs, output):
        return output + noise.to(device=output.device, dtype=output.dtype)

    handle = embedding.register_forward_hook(add)
    try:
        yield
    finally:
        handle.remove()
