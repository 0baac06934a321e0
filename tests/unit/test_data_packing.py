"""Packing: every sample exactly once and whole, capacity respected, high fill; pack tensors by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron_sft.data.batch import build_pack, collate, join_rows
from megatron_sft.data.packing import fill, greedy_concat_bins, pack, padded_sizes


def realistic_lengths(n: int = 20000, seed: int = 0) -> np.ndarray:
    """A chat SFT mix: log-normal conversation lengths, median 350 tokens, sigma 1.0, within [16, 4096]
    (short Q&A up to long multi-turn / reasoning conversations)."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(350), 1.0, n).astype(np.int64), 16, 4096)


@pytest.mark.parametrize("algorithm", ["best_fit", "first_fit_decreasing"])
def test_each_sample_once_capacity_respected_and_fill_at_least_99_percent(algorithm):
    lengths = realistic_lengths()
    offsets, items = pack(lengths, 4096, algorithm)
    assert sorted(items.tolist()) == list(range(len(lengths)))  # no sample lost or duplicated
    per_pack = np.add.reduceat(lengths[items], offsets[:-1])
    assert per_pack.max() <= 4096
    assert per_pack.sum() == lengths.sum()  # no token dropped
    assert fill(lengths, len(offsets) - 1, 4096) >= 0.99
    # Far better than the reference's in-order concatenation (without its dropped tails).
    assert len(offsets) - 1 < greedy_concat_bins(lengths, 4096)
    again = pack(lengths, 4096, algorithm)
    assert np.array_equal(again[0], offsets) and np.array_equal(again[1], items)  # deterministic


def test_best_fit_picks_the_fullest_bin_that_fits():
    # Decreasing: 6 -> bin0 (room 4), 5 -> bin1 (room 5), 4 -> bin0 (exact fit), 3 -> bin1 (room 2), 2 -> bin1.
    offsets, items = pack(np.array([2, 6, 4, 5, 3]), 10, "best_fit")
    assert [items[offsets[b] : offsets[b + 1]].tolist() for b in range(len(offsets) - 1)] == [[1, 2], [3, 4, 0]]
    offsets, items = pack(np.array([2, 6, 4, 5, 3]), 10, "first_fit_decreasing")
    assert [items[offsets[b] : offsets[b + 1]].tolist() for b in range(len(offsets) - 1)] == [[1, 2], [3, 4, 0]]


def test_padded_sizes_and_oversize_rejected():
    assert padded_sizes(np.array([1, 4, 5, 8]), 4).tolist() == [4, 4, 8, 8]
    with pytest.raises(ValueError):
        pack(np.array([11]), 10)


def reference_pack(samples, seq_length, pad, m):
    """Position-by-position construction of the expected tensors."""
    tokens, labels, loss, pos, seg = [], [], [], [], []
    for s, (ids, sup) in enumerate(samples):
        n = len(ids)
        padded = -(-n // m) * m
        for i in range(padded):
            tokens.append(int(ids[i]) if i < n else pad)
            has_next = i + 1 < n
            labels.append(int(ids[i + 1]) if has_next else pad)
            loss.append(float(sup[i + 1]) if has_next else 0.0)
            pos.append(i)
            seg.append(s)
    rest = seq_length - len(tokens)
    tokens += [pad] * rest
    labels += [pad] * rest
    loss += [0.0] * rest
    pos += list(range(rest))
    seg += [len(samples)] * rest
    mask = [[not (seg[q] == seg[k] and k <= q) for k in range(seq_length)] for q in range(seq_length)]
    return tokens, labels, loss, pos, mask


def test_join_rows_makes_one_thd_stream_with_offset_boundaries():
    """A micro-batch of 2 rows -> one [1, 2S] stream; boundaries of row 2 shifted past row 1."""
    first = build_pack([(np.array([10, 11, 12, 13, 14]), np.ones(5)), (np.array([20, 21, 22]), np.ones(3))],
                       12, pad_id=0, cp_multiple=4)  # real 5 + 3, padded 8 + 4: no trailing padding
    second = build_pack([(np.array([30, 31]), np.ones(2))], 12, pad_id=0, cp_multiple=4)  # 2 (4), then 8 padding
    stream = join_rows(collate([first, second], with_attention_mask=True))
    assert "attention_mask" not in stream
    assert stream["tokens"].tolist() == [[10, 11, 12, 13, 14, 0, 0, 0, 20, 21, 22, 0, 30, 31] + [0] * 10]
    assert stream["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 0, 1, 2, 3] + list(range(8))]
    assert stream["cu_seqlens_padded"].tolist() == [0, 8, 12, 16, 24]
    assert stream["cu_seqlens"].tolist() == [0, 5, 8, 10, 18]  # real lengths 5, 3, 2 and the padding (8)
    assert stream["labels"].shape == stream["loss_mask"].shape == (1, 24)


@pytest.mark.parametrize("m", [1, 4])
def test_build_pack_matches_position_by_position_reference(m):
    samples = [
        (np.array([10, 11, 12, 13, 14]), np.array([0, 0, 1, 1, 0])),
        (np.array([20, 21, 22]), np.array([0, 1, 1])),
        (np.array([30, 31]), np.array([0, 1])),
    ]
    row = build_pack(samples, 24, pad_id=0, cp_multiple=m)
    tokens, labels, loss, pos, mask = reference_pack(samples, 24, 0, m)
    assert row["tokens"].tolist() == tokens
    assert row["labels"].tolist() == labels
    assert row["loss_mask"].tolist() == loss
    assert row["position_ids"].tolist() == pos
    batch = collate([row], with_attention_mask=True)
    assert batch["attention_mask"].shape == (1, 1, 24, 24) and batch["attention_mask"].dtype == torch.bool
    assert batch["attention_mask"][0, 0].tolist() == mask
    assert batch["num_supervised"].item() == 5
    assert batch["num_padding"].sum().item() == (14 if m == 1 else 8)  # the trailing padding segment
    if m == 1:
        assert row["cu_seqlens"].tolist() == [0, 5, 8, 10, 24] == row["cu_seqlens_padded"].tolist()
    else:  # real lengths 5, 3, 2 and the trailing padding (8), against their padded extents
        assert row["cu_seqlens"].tolist() == [0, 5, 8, 10, 18]
        assert row["cu_seqlens_padded"].tolist() == [0, 8, 12, 16, 24]
    two = collate([row, row])  # the default: no S x S mask
    assert two["tokens"].shape == (2, 24) and isinstance(two["cu_seqlens"], list)
    assert "attention_mask" not in two and two["num_supervised"].item() == 10
