"""Batch layout for generation: left padding, masks, positions and batching (no model needed)."""

from __future__ import annotations

import torch

from megatron_sft.inference.generate import GenerationOptions, _Batch, _batches


def test_left_padding_positions_and_prefill_mask():
    batch = _Batch([[5, 6, 7], [8]], new_tokens=2, pad_id=0)
    assert batch.tokens.tolist() == [[5, 6, 7, 0, 0], [0, 0, 8, 0, 0]]
    assert batch.positions.tolist() == [[0, 1, 2, 3, 4], [0, 0, 0, 1, 2]]
    mask = batch.mask(0, 3)
    assert mask.shape == (2, 1, 3, 3)
    causal = torch.triu(torch.ones(3, 3, dtype=torch.bool), diagonal=1)
    assert torch.equal(mask[0, 0], causal)  # the unpadded row: causal only
    assert mask[1, 0, :, :2].all() and not mask[1, 0, 2, 2]  # the padded row never sees its padding


def test_decode_mask_covers_every_key_so_far():
    batch = _Batch([[5, 6, 7], [8]], new_tokens=2, pad_id=0)
    mask = batch.mask(3, 4)  # the first generated token, with the cache holding positions 0-2
    assert mask.shape == (2, 1, 1, 4)
    assert mask[0, 0, 0].tolist() == [False] * 4
    assert mask[1, 0, 0].tolist() == [True, True, False, False]


def test_no_mask_without_padding():
    assert _Batch([[1, 2], [3, 4]], new_tokens=3, pad_id=0).mask(0, 2) is None


def test_batches_keep_order_or_group_equal_lengths():
    prompts = [[1], [1, 2], [3], [4, 5], [6]]
    opts = GenerationOptions(max_new_tokens=1, vocab_size=10, batch_size=2)
    assert _batches(prompts, opts) == [[0, 1], [2, 3], [4]]
    grouped = _batches(prompts, GenerationOptions(max_new_tokens=1, vocab_size=10, batch_size=2,
                                                  masks_supported=False))
    assert grouped == [[0, 2], [4], [1, 3]]
    assert all(len({len(prompts[r]) for r in rows}) == 1 for rows in grouped)
