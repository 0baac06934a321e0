"""Packed sequences -> training tensors, and the context-parallel (THD) split of a batch.

One pack of `seq_length` tokens holds whole samples back to back, each padded to a multiple of
2*CP under context parallelism, then padding to the end (its own segment). Per position i inside a
sample: labels[i] = tokens[i+1], loss_mask[i] = the loss weight of token i+1 (1 if supervised, or its message's
"weight"; 0 if not); the last position of a
sample (and all padding) predicts nothing, so no loss crosses a sample boundary. Position ids restart
at 0 in every segment; cu_seqlens carries the segmentation that THD attention reads (`join_rows`
makes one THD stream of a micro-batch). The explicit block-diagonal causal mask (True = masked,
Megatron's local spec convention) is built only for `--attention-backend local` and tests.

A micro-batch (`collate`) holds:
  tokens, labels [B, S] int64; loss_mask [B, S] float32 (aligned with labels); position_ids [B, S] int64;
  attention_mask [B, 1, S, S] bool, True = masked (only with `with_attention_mask`);
  cu_seqlens: int32 [n+1] for B=1, else a list of those per row: real sample lengths, cumulated, the
      trailing padding counted as one more segment; cu_seqlens_padded: the same with each sample's
      CP padding included (equal to cu_seqlens without context parallelism); max_seqlen: int;
  num_supervised: int64 scalar, the number of loss tokens (loss_mask > 0: it holds weights with
      --loss-normalization sample or weighted messages); num_padding: int64 [B], per row the tokens
      of its trailing padding segment (0: the row is full; else its last cu_seqlens segment is padding);
  sample_ids: per row, the cache's ids of its samples in segment order (rows from SFTDataset);
  sample_sources: per row, the index of each of those samples' data source (the cache's metadata names them).
"""

from __future__ import annotations

import numpy as np
import torch

from megatron_sft.ops.context_parallel import context_parallel_indices

PACK_KEYS = ("tokens", "labels", "loss_mask", "position_ids")


def build_pack(
    samples: list[tuple[np.ndarray, np.ndarray]], seq_length: int, pad_id: int, cp_multiple: int = 1,
    per_sample: bool = False,
) -> dict:
    """One packed row from (token ids, per-token loss weights) samples whose padded lengths fit in seq_length. The
    weights are the 0/1 supervised flags, or a message's "weight" on its tokens: the loss is the weighted mean.

    per_sample (--loss-normalization sample): a sample's loss-mask entries are divided by their sum, so each
    sample weighs 1 in total and the division by the summed mask makes the loss the mean of the samples' (weighted)
    means, whatever the packing, micro-batching or layout."""
    tokens = np.full(seq_length, pad_id, dtype=np.int64)
    labels = np.full(seq_length, pad_id, dtype=np.int64)
    loss_mask = np.zeros(seq_length, dtype=np.float32)
    position_ids = np.zeros(seq_length, dtype=np.int64)
    cu, cu_padded, at = [0], [0], 0
    for ids, supervised in samples:
        n = len(ids)
        padded = -(-n // cp_multiple) * cp_multiple
        assert at + padded <= seq_length, "pack overflows seq_length"
        tokens[at : at + n] = ids
        labels[at : at + n - 1] = ids[1:]
        weights = supervised[1:].astype(np.float32)
        total = float(weights.sum())
        loss_mask[at : at + n - 1] = weights / total if per_sample and total > 0 else weights
        position_ids[at : at + padded] = np.arange(padded)
        at += padded
        cu.append(cu[-1] + n)
        cu_padded.append(at)
    if at < seq_length:  # trailing padding is a segment of its own
        position_ids[at:] = np.arange(seq_length - at)
        cu.append(cu[-1] + seq_length - at)
        cu_padded.append(seq_length)
    row = {k: torch.from_numpy(v) for k, v in zip(PACK_KEYS, (tokens, labels, loss_mask, position_ids))}
    row["cu_seqlens"] = torch.tensor(cu, dtype=torch.int32)
    row["cu_seqlens_padded"] = torch.tensor(cu_padded, dtype=torch.int32)
    row["num_padding"] = seq_length - at  # tokens of the trailing padding segment (0: the pack is full)
    return row


def attention_mask_from_cu_seqlens(cu_seqlens_padded: torch.Tensor, seq_length: int) -> torch.Tensor:
    """[1, S, S] bool, True where query q may NOT attend key k: other segment, or k after q."""
    lengths = (cu_seqlens_padded[1:] - cu_seqlens_padded[:-1]).long()
    segment = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    assert len(segment) == seq_length, "cu_seqlens_padded must cover the sequence"
    causal = torch.ones(seq_length, seq_length, dtype=torch.bool).tril_()
    return ~(causal & (segment[:, None] == segment[None, :]))[None]


def collate(rows: list[dict], with_attention_mask: bool = False) -> dict:
    """Stack packed rows into a micro-batch (the contract training consumes).

    The [B, 1, S, S] mask is built only on request (`--attention-backend local`, tests): the default
    backend reads cu_seqlens instead, and an S x S mask per row would make memory quadratic in S.
    """
    batch = {k: torch.stack([r[k] for r in rows]) for k in PACK_KEYS}
    seq_length = batch["tokens"].shape[1]
    cu = [r["cu_seqlens"] for r in rows]
    cu_padded = [r["cu_seqlens_padded"] for r in rows]
    if with_attention_mask:
        batch["attention_mask"] = torch.stack([attention_mask_from_cu_seqlens(c, seq_length) for c in cu_padded])
    batch["cu_seqlens"] = cu[0] if len(rows) == 1 else cu
    batch["cu_seqlens_padded"] = cu_padded[0] if len(rows) == 1 else cu_padded
    batch["max_seqlen"] = int(max(int((c[1:] - c[:-1]).max()) for c in cu_padded))
    batch["num_supervised"] = (batch["loss_mask"] > 0).sum().to(torch.int64)
    batch["num_padding"] = torch.tensor([int(r.get("num_padding", 0)) for r in rows], dtype=torch.int64)
    for key in ("sample_ids", "sample_sources"):
        if all(key in r for r in rows):
            batch[key] = [r[key] for r in rows]
    return batch


def join_rows(batch: dict) -> dict:
    """A micro-batch of B rows as one token stream [1, B*S] (THD: Megatron drops the batch dimension).

    Row r's segments keep their order, offset by the rows before it (r*S in cu_seqlens_padded; the
    real lengths in cu_seqlens are cumulated the same way). Every row's trailing padding stays a
    segment of its own, so no sample ever meets another.
    """
    b, s = batch["tokens"].shape
    if b == 1:
        return {k: v for k, v in batch.items() if k != "attention_mask"}
    out = {k: v for k, v in batch.items() if k not in ("attention_mask",) + PACK_KEYS}
    for key in PACK_KEYS:
        if key in batch:
            out[key] = batch[key].reshape(1, b * s)
    for key in ("cu_seqlens", "cu_seqlens_padded"):
        if key in batch:
            joined, offset = [torch.zeros(1, dtype=torch.int32)], 0
            for c in _rows(batch[key], b):
                c = torch.as_tensor(c, dtype=torch.int32)
                joined.append(c[1:] + offset)
                offset += int(c[-1])
            out[key] = torch.cat(joined)
    return out


def _rows(value, batch_size: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * batch_size


def _segments(batch: dict) -> list[torch.Tensor]:
    """Per row, the padded segment boundaries; an unpacked batch is one segment per row."""
    b, s = batch["tokens"].shape
    for key in ("cu_seqlens_padded", "cu_seqlens"):
        if key in batch:
            return [torch.as_tensor(c) for c in _rows(batch[key], b)]
    return [torch.tensor([0, s], dtype=torch.int32)] * b


def split_for_context_parallel(batch: dict, cp_size: int, cp_rank: int) -> dict:
    """This CP rank's share of a batch (THD partition of Megatron and Transformer Engine).

    tokens/labels/loss_mask/position_ids become [B, S/CP]; the attention mask keeps the rows of this
    rank's queries against all keys ([B, 1, S/CP, S], as Megatron's get_batch_on_this_cp_rank does);
    cu_seqlens stay global (THD attention needs them whole); num_supervised becomes this rank's count
    (the ranks' counts sum to the total).
    """
    if cp_size == 1:
        return batch
    if not 0 <= cp_rank < cp_size:
        raise ValueError(f"cp_rank {cp_rank} is outside [0, {cp_size})")
    index = torch.stack([context_parallel_indices(seg, cp_size, cp_rank) for seg in _segments(batch)])
    out = dict(batch)
    for key in PACK_KEYS:
        if key in batch:
            out[key] = torch.gather(batch[key], 1, index)
    if "attention_mask" in batch:
        rows = index[:, None, :, None].expand(-1, 1, -1, batch["attention_mask"].shape[-1])
        out["attention_mask"] = torch.gather(batch["attention_mask"], 2, rows)
    if "loss_mask" in out:
        out["num_supervised"] = (out["loss_mask"] > 0).sum().to(torch.int64)
    return out


def pad_for_context_parallel(batch: dict, cp_size: int, pad_token_id: int) -> dict:
    """Re-lay a batch so every segment's length is a multiple of 2*CP (padding after each segment).

    Padding predicts nothing (loss 0), continues its segment's positions, and is recorded in
    cu_seqlens_padded; cu_seqlens keeps the real lengths. Rows grow to a common multiple of 2*CP.
    """
    m = 2 * cp_size
    b = batch["tokens"].shape[0]
    segments = _segments(batch)
    real = [torch.as_tensor(c) for c in _rows(batch["cu_seqlens"], b)] if "cu_seqlens" in batch else segments
    width = max(int(sum(-(-int(n) // m) * m for n in (s[1:] - s[:-1]).tolist())) for s in segments)
    fill = {"tokens": pad_token_id, "labels": pad_token_id, "loss_mask": 0, "position_ids": 0}
    out = {k: torch.full((b, width), fill[k], dtype=batch[k].dtype) for k in PACK_KEYS if k in batch}
    new_padded = []
    for row, seg in enumerate(segments):
        cu, at = [0], 0
        for a, z in zip(seg[:-1].tolist(), seg[1:].tolist()):
            n = z - a
            padded = -(-n // m) * m
            for key, values in out.items():
                values[row, at : at + n] = batch[key][row, a:z]
            if "position_ids" in out and padded > n:
                out["position_ids"][row, at + n : at + padded] = torch.arange(n, padded)
            at += padded
            cu.append(at)
        if at < width:  # rows shorter than the widest get a padding segment
            if "position_ids" in out:
                out["position_ids"][row, at:] = torch.arange(width - at)
            cu.append(width)
        new_padded.append(torch.tensor(cu, dtype=torch.int32))
    new_real = []
    for r, p in zip(real, new_padded):
        extra = [int(r[-1]) + int(p[-1] - p[-2])] if len(p) > len(r) else []
        new_real.append(torch.cat([r.to(torch.int32), torch.tensor(extra, dtype=torch.int32)]))
    out["cu_seqlens"] = new_real[0] if b == 1 else new_real
    out["cu_seqlens_padded"] = new_padded[0] if b == 1 else new_padded
    out["max_seqlen"] = max(int((p[1:] - p[:-1]).max()) for p in new_padded)
    if "loss_mask" in out:
        out["num_supervised"] = (out["loss_mask"] > 0).sum().to(torch.int64)
    if "attention_mask" in batch:
        out["attention_mask"] = torch.stack([attention_mask_from_cu_seqlens(p, width) for p in new_padded])
    return out
