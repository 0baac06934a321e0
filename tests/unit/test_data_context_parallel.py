"""Context-parallel split of packed (THD) and unpacked batches, against straightforward references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from megatron_sft.data.batch import build_pack, collate, pad_for_context_parallel, split_for_context_parallel

pytestmark = pytest.mark.numerics


def reference_positions(bounds: list[int], cp: int, rank: int) -> list[int]:
    """The rule, position by position: in each sample cut into 2*CP equal chunks, keep the positions
    whose chunk number is `rank` or 2*CP-1-rank, in sequence order."""
    keep = []
    for a, b in itertools.pairwise(bounds):
        chunk_len = (b - a) // (2 * cp)
        keep += [p for p in range(a, b) if (p - a) // chunk_len in (rank, 2 * cp - 1 - rank)]
    return keep


def packed_batch(cp: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    samples = []
    for n in (7, 13, 4, 22, 9):
        ids = rng.integers(5, 100, n)
        sup = (rng.random(n) < 0.6).astype(np.uint8)
        samples.append((ids, sup))
    return collate([build_pack(samples, 96, pad_id=0, cp_multiple=2 * cp)], with_attention_mask=True)


def token_losses(batch: dict) -> torch.Tensor:
    """Per-position cross entropy of a fixed toy model whose logits depend on token and position only."""
    torch.manual_seed(0)
    emb, pos = torch.randn(100, 100), torch.randn(128, 100)
    logits = emb[batch["tokens"]] + pos[batch["position_ids"]]
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["labels"], reduction="none")


@pytest.mark.parametrize("cp", [2, 4])
def test_packed_split_matches_reference_reassembles_and_keeps_the_loss(cp):
    batch = packed_batch(cp)
    bounds = batch["cu_seqlens_padded"].tolist()
    whole_loss = (token_losses(batch) * batch["loss_mask"]).sum()
    rebuilt = {k: torch.full_like(batch[k], -1) for k in ("tokens", "labels", "loss_mask", "position_ids")}
    loss_sum, supervised = 0.0, 0
    for rank in range(cp):
        part = split_for_context_parallel(batch, cp, rank)
        keep = reference_positions(bounds, cp, rank)
        assert len(keep) == 96 // cp
        for key, values in rebuilt.items():
            assert part[key].tolist() == [batch[key][0, keep].tolist()]
            values[0, keep] = part[key][0]
        assert torch.equal(part["attention_mask"][0, 0], batch["attention_mask"][0, 0, keep])
        assert torch.equal(part["cu_seqlens"], batch["cu_seqlens"])  # THD attention gets them whole
        loss_sum = loss_sum + (token_losses(part) * part["loss_mask"]).sum()
        supervised += int(part["num_supervised"])
    for key, values in rebuilt.items():
        assert torch.equal(values, batch[key])
    # the same per-token losses summed in CP shares: fp32 summation order only (a token lost or counted twice is
    # ~1e-2 of the sum)
    assert torch.allclose(loss_sum, whole_loss, rtol=1e-6)
    assert supervised == int(batch["num_supervised"])


def test_unpacked_batch_is_chunked_like_megatron(monkeypatch):
    from megatron.core import parallel_state
    from megatron.core.utils import get_batch_on_this_cp_rank

    tokens = torch.arange(2 * 16).reshape(2, 16)
    batch = {"tokens": tokens, "labels": tokens + 100, "loss_mask": torch.ones(2, 16), "position_ids": tokens % 16}
    for rank in range(2):
        monkeypatch.setattr(parallel_state, "get_context_parallel_world_size", lambda: 2)
        monkeypatch.setattr(parallel_state, "get_context_parallel_rank", lambda r=rank: r)
        theirs = get_batch_on_this_cp_rank({k: v.clone() for k, v in batch.items()})
        ours = split_for_context_parallel(batch, 2, rank)
        for key in batch:
            assert torch.equal(ours[key], theirs[key])
        assert ours["tokens"][0].tolist() == reference_positions([0, 16], 2, rank)


def test_pad_for_context_parallel_then_split():
    samples = [(np.array([1, 2, 3, 4, 5]), np.array([0, 1, 1, 1, 1])), (np.array([6, 7, 8]), np.array([0, 0, 1]))]
    # segments 5, 3, 2: not multiples of 4
    plain = collate([build_pack(samples, 10, pad_id=0)], with_attention_mask=True)
    with pytest.raises(ValueError, match="pad_for_context_parallel"):
        split_for_context_parallel(plain, 2, 0)
    padded = pad_for_context_parallel(plain, 2, pad_token_id=0)
    assert padded["cu_seqlens_padded"].tolist() == [0, 8, 12, 16]
    assert padded["cu_seqlens"].tolist() == [0, 5, 8, 10]
    assert padded["tokens"][0].tolist() == [1, 2, 3, 4, 5, 0, 0, 0, 6, 7, 8, 0, 0, 0, 0, 0]
    assert padded["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 0, 1, 2, 3]
    assert padded["loss_mask"].sum() == plain["loss_mask"].sum() == padded["num_supervised"]
    assert padded["attention_mask"].shape == (1, 1, 16, 16)
    parts = [split_for_context_parallel(padded, 2, r) for r in range(2)]
    assert parts[0]["tokens"][0].tolist() == [1, 2, 0, 0, 6, 0, 0, 0]
    assert sum(int(p["num_supervised"]) for p in parts) == int(plain["num_supervised"])
