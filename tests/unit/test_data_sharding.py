"""Data-parallel sharding, epochs and resumption of the packed-sequence stream."""

from __future__ import annotations

import itertools
import json

import torch

from megatron_sft.data import DataConfig, build_sft_datasets
from megatron_sft.data.sharding import PackStream
from megatron_sft.tiny import make_tiny_tokenizer


def stream(dp_rank, dp_size, mbs=2, consumed=0, n_packs=10, seed=3, shuffle=True):
    return PackStream(
        n_packs,
        lambda i: i,
        lambda rows: list(rows),
        dp_rank=dp_rank,
        dp_size=dp_size,
        micro_batch_size=mbs,
        consumed_samples=consumed,
        shuffle=shuffle,
        seed=seed,
    )


def test_one_global_batch_is_consecutive_samples_split_over_replicas():
    dp, mbs, gbs = 2, 2, 8  # two micro-batches per replica per global batch
    s = stream(0, dp)
    order = [s.pack_of(g) for g in range(40)]  # the global sample order: 4 epochs of 10 packs
    for epoch in range(4):
        assert sorted(order[10 * epoch : 10 * epoch + 10]) == list(range(10))  # each pack once per epoch
    assert order[:10] != order[10:20]  # reshuffled per epoch
    assert order == [stream(1, dp).pack_of(g) for g in range(40)]  # every rank agrees on the order
    per_rank = [list(itertools.islice(iter(stream(d, dp, mbs)), 4)) for d in range(dp)]
    for step in range(2):  # global batch `step`: micro-batches 2*step and 2*step+1 of every replica
        got = sorted(p for d in range(dp) for mb in per_rank[d][2 * step : 2 * step + 2] for p in mb)
        assert got == sorted(order[gbs * step : gbs * (step + 1)])
    # Replica d reads global samples d, d+D, d+2D, ...
    assert per_rank[1][0] == [order[1], order[3]] and per_rank[0][1] == [order[4], order[6]]


def test_resume_from_consumed_samples_continues_the_stream():
    fresh = list(itertools.islice(iter(stream(1, 2)), 6))
    resumed = list(itertools.islice(iter(stream(1, 2, consumed=8)), 4))
    assert resumed == fresh[2:]  # 8 consumed = 4 reads of each replica = 2 micro-batches of 2


def test_unshuffled_split_reads_in_order_and_cycles():
    s = stream(0, 1, mbs=3, n_packs=4, shuffle=False)
    assert list(itertools.islice(iter(s), 3)) == [[0, 1, 2], [3, 0, 1], [2, 3, 0]]


def test_streams_from_build_sft_datasets_depend_only_on_dp_rank(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"q {i}"},
                        {"role": "assistant", "content": "a " * (i % 9 + 1)},
                    ]
                }
            )
            + "\n"
            for i in range(40)
        )
    )
    cfg = DataConfig(
        data_path=[str(path)],
        seq_length=32,
        split="100,0,0",
        data_cache_dir=str(tmp_path / "c"),
        num_workers=1,
        micro_batch_size=2,
        global_batch_size=4,
    )
    tok = make_tiny_tokenizer("qwen3")
    # Two TP/PP/CP ranks of replica 1 call with the same data-parallel rank: identical streams.
    a = list(itertools.islice(iter(build_sft_datasets(cfg, tok, dp_rank=1, dp_size=2).train), 3))
    b = list(itertools.islice(iter(build_sft_datasets(cfg, tok, dp_rank=1, dp_size=2).train), 3))
    c = list(itertools.islice(iter(build_sft_datasets(cfg, tok, dp_rank=0, dp_size=2).train), 3))
    assert all(torch.equal(x["tokens"], y["tokens"]) for x, y in zip(a, b))
    assert not torch.equal(a[0]["tokens"], c[0]["tokens"])
    assert a[0]["tokens"].shape == (2, 32) and len(a[0]["cu_seqlens"]) == 2
