"""The q/k/v split of --save-hf against Megatron's fused layout built here group by group (with one query group the
parts are views of one tensor: safetensors must still write and read them back)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from megatron_sft.checkpointing.hf_tensors import _split_qkv


@pytest.mark.parametrize("heads,groups", [(4, 2), (4, 4), (4, 1)])
def test_split_qkv_inverts_megatrons_grouped_layout(tmp_path, heads, groups):
    from safetensors.torch import load_file, save_file

    d, hidden = 3, 5
    q, k, v = torch.randn(heads * d, hidden), torch.randn(groups * d, hidden), torch.randn(groups * d, hidden)
    per_group = heads // groups
    rows = []  # linear_qkv: for each group its query heads, then its key head, then its value head
    for g in range(groups):
        rows += [q[(g * per_group + h) * d:(g * per_group + h + 1) * d] for h in range(per_group)]
        rows += [k[g * d:(g + 1) * d], v[g * d:(g + 1) * d]]
    fused = torch.cat(rows)
    config = SimpleNamespace(num_query_groups=groups, kv_channels=d, num_attention_heads=heads)
    got = _split_qkv(fused, config)
    assert all(torch.equal(a, b) for a, b in zip(got, (q, k, v)))
    bias = _split_qkv(fused[:, 0].contiguous(), config)  # a bias has no hidden dimension
    assert all(torch.equal(a, b[:, 0]) for a, b in zip(bias, (q, k, v)))
    save_file(dict(zip("qkv", got)), str(tmp_path / "qkv.safetensors"))
    assert torch.equal(load_file(tmp_path / "qkv.safetensors")["k"], k)
