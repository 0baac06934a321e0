"""Throughput figures count real tokens: padding is neither a sample nor FLOPs."""

from __future__ import annotations

import numpy as np

from megatron_sft.data.batch import build_pack, collate
from megatron_sft.training.metrics import sample_lengths, training_flops


def _sample(n: int):
    return np.arange(1, n + 1, dtype=np.int64), np.ones(n, dtype=np.uint8)


def test_sample_lengths_skip_each_rows_padding():
    full = build_pack([_sample(6), _sample(10)], 16, pad_id=0)  # no padding
    padded = build_pack([_sample(5), _sample(3)], 16, pad_id=0)  # 8 padding tokens
    assert sample_lengths(collate([full, padded])) == [6, 10, 5, 3]
    assert sample_lengths(collate([padded])) == [5, 3]


def test_causal_flops_formula():
    from megatron_sft.config import RunConfig

    args = RunConfig.from_values(dict(hidden_size=8, num_layers=2, num_attention_heads=2, kv_channels=4,
                                      num_query_groups=1, ffn_hidden_size=16, swiglu=True, padded_vocab_size=32))
    # per token, forward: 2 FLOPs per weight: qkv 8*(8+2*4), proj 8*8, swiglu mlp 8*16*3, per layer; lm head 8*32
    weights = 2 * (8 * 16 + 8 * 8 + 8 * 48) + 8 * 32

    def attention(n: int) -> float:  # layers * (QK^T + AV) * 2 FLOPs * q-dim * causal pairs
        return 2 * 2 * 2 * 8 * n * (n + 1) / 2

    expected = 3 * (2 * weights * (3 + 5) + attention(3) + attention(5))
    assert training_flops([3, 5], args) == expected
