"""The packed attention module against attention written out by hand (float64, one sample at a time).

Context parallelism is checked here with the all-gather replaced by the concatenation it performs
(every rank's local keys, in rank order); tests/distributed runs it over real process groups.
"""

from __future__ import annotations

import math
import types

import pytest
import torch

from megatron_sft.data.batch import context_parallel_indices

pytestmark = pytest.mark.numerics


class Group:
    """Just enough of a process group for the module: size and rank."""

    def __init__(self, size: int = 1, rank: int = 0):
        self._size, self._rank = size, rank

    def size(self) -> int:
        return self._size

    def rank(self) -> int:
        return self._rank


def make_attention(heads=4, groups=2, d=8, cp=1, rank=0):
    from megatron.core.transformer.transformer_config import TransformerConfig

    from megatron_sft.models.attention import PackedSDPAttention

    config = TransformerConfig(num_layers=1, hidden_size=heads * d, num_attention_heads=heads,
                               num_query_groups=groups, kv_channels=d, attention_dropout=0.0,
                               use_cpu_initialization=True)
    pg = types.SimpleNamespace(tp=Group(), cp=Group(cp, rank))
    return PackedSDPAttention(config, 1, None, "self", pg_collection=pg).eval()


def by_hand(q, k, v, bounds, mask_fn=None):
    """Softmax(q k^T / sqrt(d)) v per sample, causal, GQA by repeating K/V: [T, heads * d] float64."""
    rep, d = q.shape[1] // k.shape[1], q.shape[-1]
    out = torch.zeros(q.shape, dtype=torch.float64)
    for a, b in zip(bounds[:-1], bounds[1:]):
        qq = q[a:b].double().transpose(0, 1)
        kk = k[a:b].double().repeat_interleave(rep, 1).transpose(0, 1)
        vv = v[a:b].double().repeat_interleave(rep, 1).transpose(0, 1)
        scores = qq @ kk.transpose(1, 2) / math.sqrt(d)
        allowed = torch.ones(b - a, b - a, dtype=torch.bool).tril()
        out[a:b] = (scores.masked_fill(~allowed, -math.inf).softmax(-1) @ vv).transpose(0, 1)
    return out.reshape(q.shape[0], -1)


def qkv(total: int, heads=4, groups=2, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(total, heads, d, generator=g), torch.randn(total, groups, d, generator=g),
            torch.randn(total, groups, d, generator=g))


def thd(bounds):
    from megatron_sft.training.inputs import thd_params

    b = torch.tensor(bounds, dtype=torch.int32)
    return thd_params(b, b, int((b[1:] - b[:-1]).max()))


@pytest.mark.parametrize("short", [0, 6, 256])  # every sample alone; some batched; all batched
def test_thd_attention_stays_inside_each_sample(short, monkeypatch):
    from megatron_sft.models import attention

    monkeypatch.setattr(attention, "SHORT", short)
    bounds = [0, 5, 12, 13, 24]  # a one-token sample included
    q, k, v = qkv(24)
    out = make_attention()(q, k, v, None, packed_seq_params=thd(bounds))
    assert out.shape == (24, 32)
    # fp32 attention against the same formula in fp64 on O(1) inputs: fp32 rounding of a 32-wide dot product and
    # a softmax, ~1e-6; attending across a boundary moves outputs by O(0.1) (checked below)
    assert (out.double() - by_hand(q, k, v, bounds)).abs().max().item() < 1e-5
    # the check can fail: the same tokens as one sample give other values after the first boundary
    assert (out.double() - by_hand(q, k, v, [0, 24]))[5:].abs().max().item() > 1e-2


@pytest.mark.parametrize("cp", [2, 4])
def test_context_parallel_chunks_equal_the_whole_sample(cp, monkeypatch):
    import megatron.core.tensor_parallel as tp_module

    bounds = [0, 8, 24, 32]  # multiples of 2 x CP, as the data pipeline pads them
    q, k, v = qkv(32, seed=cp)
    expected = by_hand(q, k, v, bounds)
    boundaries = torch.tensor(bounds)
    index = [context_parallel_indices(boundaries, cp, r) for r in range(cp)]
    gathered = {}  # what all_gather over the CP group returns for each local tensor

    def fake_gather(local, group=None, **_):
        return gathered[local.data_ptr()]

    monkeypatch.setattr(tp_module, "gather_from_sequence_parallel_region", fake_gather)
    for rank in range(cp):
        local_k, local_v = k[index[rank]], v[index[rank]]
        gathered[local_k.data_ptr()] = torch.cat([k[i] for i in index])
        gathered[local_v.data_ptr()] = torch.cat([v[i] for i in index])
        out = make_attention(cp=cp, rank=rank)(q[index[rank]], local_k, local_v, None,
                                               packed_seq_params=thd(bounds))
        assert out.shape[0] == 32 // cp  # this rank computed its share of the queries only
        assert (out.double() - expected[index[rank]]).abs().max().item() < 1e-5


def test_sbhd_masks_and_kv_cache_decode():
    """Generation's path: [s, b, heads, d] with Megatron's mask (True = masked), or a cached prefix."""
    q, k, v = qkv(10)
    attn = make_attention()
    causal = by_hand(q, k, v, [0, 10]).reshape(10, 1, -1)
    plain = attn(q[:, None], k[:, None], v[:, None], None)
    assert (plain.double() - causal).abs().max().item() < 1e-5
    mask = torch.ones(10, 10, dtype=torch.bool).tril().logical_not()[None, None]
    masked = attn(q[:, None], k[:, None], v[:, None], mask)
    assert (masked.double() - causal).abs().max().item() < 1e-5
    decode = attn(q[7:, None], k[:, None], v[:, None], None)  # 3 new queries over 10 cached keys
    assert (decode.double() - causal[7:]).abs().max().item() < 1e-5


def test_left_padding_gives_finite_outputs_and_leaves_real_tokens_alone():
    """Generation's left padding masks every key of a padding query; that row must not become NaN."""
    q, k, v = qkv(10)
    pad = torch.zeros(10, dtype=torch.bool)
    pad[:3] = True  # three padding tokens, then a 7-token prompt
    mask = (torch.ones(10, 10, dtype=torch.bool).tril().logical_not() | pad[None, :])[None, None]
    out = make_attention()(q[:, None], k[:, None], v[:, None], mask)
    assert torch.isfinite(out).all()
    alone = by_hand(q[3:], k[3:], v[3:], [0, 7]).reshape(7, 1, -1)
    assert (out[3:].double() - alone).abs().max().item() < 1e-5
