"""Build one cache directory: tokenized samples (memory-mapped), packs per split, metadata.json.

Layout of the directory:
  tokens.bin          uint32, all kept samples' token ids, back to back
  supervised.bin      uint8, 1 where the token is supervised (trained on), aligned with tokens.bin
  loss_weight.bin     float32, each token's loss weight (0: not supervised); only when a message of the
                      data carries a "weight" other than 1
  sample_offsets.npy  int64 [n+1], sample i is tokens[offsets[i]:offsets[i+1]]
  sample_source.npy   int32 [n], index of the source each sample came from
  packs_<split>_offsets.npy / packs_<split>_samples.npy: pack p holds the samples
                      samples[offsets[p]:offsets[p+1]], in that order
  metadata.json       configuration, statistics, per-split counts and fill
"""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np

from megatron_sft.config import DataConfig
from megatron_sft.data.mixture import blend, split_indices
from megatron_sft.data.packing import PACKER_VERSION, fill, pack, padded_sizes
from megatron_sft.data.pipeline import CHUNK_RECORDS, ChunkProcessor
from megatron_sft.data.preference import PairProcessor
from megatron_sft.data.sources import Source, iter_chunks, parse_sources
from megatron_sft.data.stats import DataStats
from megatron_sft.data.tokenizer import pad_token_id
from megatron_sft.data.workers import chunk_mapper
from megatron_sft.errors import UserError

log = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")


def read_chat_template(path: str | None) -> str | None:
    if path is None:
        return None
    if not os.path.isfile(path):
        raise UserError(f"--chat-template {path}: file not found; give a Jinja chat template file")
    with open(path, encoding="utf-8") as f:
        return f.read()


def build_cache(cfg: DataConfig, tokenizer, out_dir: str, *, progress: bool = True, extra_meta: dict | None = None):
    """Tokenize, mask and pack everything `cfg` names into `out_dir` (which must not exist yet)."""
    start = time.time()
    sources = parse_sources(cfg.data_path, cfg.finetune_hf_dataset, cfg.finetune_hf_dataset_split)
    processor = _processor(cfg, tokenizer)
    os.makedirs(out_dir)
    stats = DataStats()
    counts: list[dict] = []  # per source: records read, records selected (a PATH:N subset)
    lengths, source_of = _tokenize_all(cfg, sources, processor, stats, out_dir, progress, counts)
    if len(lengths) == 0:
        raise UserError(
            f"no usable sample in {[s.spec for s in sources]}: {stats.to_dict()['dropped']} dropped, "
            f"{stats.to_dict()['invalid_skipped']} invalid; check the data format"
        )
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    np.save(os.path.join(out_dir, "sample_offsets.npy"), offsets)
    np.save(os.path.join(out_dir, "sample_source.npy"), source_of)
    splits, blend_report = _pack_splits(cfg, sources, lengths, source_of, out_dir)
    meta = {
        "config": {
            "seq_length": cfg.seq_length,
            "max_sample_length": cfg.sample_cap,
            "split": cfg.split,
            "seed": cfg.seed,
            "context_parallel_size": cfg.context_parallel_size,
            "unmask_user": cfg.unmask_user,
            "loss_turns": cfg.loss_turns,
            "skip_invalid": cfg.skip_invalid,
            "drop_long_samples": cfg.drop_long_samples,
            "eod_mask_loss": cfg.eod_mask_loss,
            "data_format": cfg.data_format,
            "packing_algorithm": cfg.packing_algorithm,
            "sample_limit": cfg.sample_limit,
            "preference": cfg.preference,
            "packer_version": PACKER_VERSION,
        },
        "sources": [
            {"spec": s.spec, "kind": s.kind, "weight": s.weight, "subset": s.subset, **c}
            for s, c in zip(sources, counts)
        ],
        "template": {
            "end_of_turn": processor.renderer.end_of_turn,
            "generation_header": processor.renderer.generation_header,
        },
        "pad_token_id": pad_token_id(tokenizer),
        "weighted": os.path.exists(os.path.join(out_dir, "loss_weight.bin")),  # a message's "weight" other than 1
        "stats": stats.to_dict(),
        "splits": splits,
        "blend": blend_report,
        "build_seconds": round(time.time() - start, 2),
        **(extra_meta or {}),
    }
    with open(os.path.join(out_dir, "metadata.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def _processor(cfg: DataConfig, tokenizer):
    if cfg.preference:  # a pair's two sequences, each padded for CP, share one pack
        return PairProcessor(tokenizer, read_chat_template(cfg.chat_template),
                             cfg.seq_length - 2 * (cfg.cp_multiple - 1), skip_invalid=cfg.skip_invalid)
    return ChunkProcessor(
        tokenizer,
        read_chat_template(cfg.chat_template),
        cfg.sample_cap,
        unmask_user=cfg.unmask_user,
        skip_invalid=cfg.skip_invalid,
        drop_long_samples=cfg.drop_long_samples,
        eod_mask_loss=cfg.eod_mask_loss,
        data_format=cfg.data_format,
        loss_turns=cfg.loss_turns,
    )


def _tokenize_all(cfg, sources, processor, stats: DataStats, out_dir: str, progress: bool, counts: list):
    def on_empty(source: Source):
        if not cfg.skip_invalid:
            raise UserError(f"{source.spec}: empty data file (no records); remove it or pass --skip-invalid")
        stats.count("invalid", "empty_file", source.spec)
        stats.log_first("empty_file")

    lengths, source_of = [], []
    bar = _progress_bar(progress)
    with (
        open(os.path.join(out_dir, "tokens.bin"), "wb") as ft,
        open(os.path.join(out_dir, "supervised.bin"), "wb") as fs,
        _WeightWriter(os.path.join(out_dir, "loss_weight.bin"), fs) as fw,
        chunk_mapper(processor, cfg.num_workers) as mapper,
    ):
        chunks = iter_chunks(sources, CHUNK_RECORDS, cfg.sample_limit, on_empty, seed=cfg.seed, counts=counts)
        for res in mapper(chunks):
            ft.write(res.tokens.tobytes())
            fw.write(res.supervised)  # before fs: a first weighted chunk backfills from the flags written so far
            fs.write((res.supervised > 0).astype(np.uint8).tobytes())
            lengths.append(res.lengths)
            source_of.append(np.full(len(res.lengths), res.source, dtype=np.int32))
            for reason in stats.merge(res.stats):
                stats.log_first(reason)
            if bar is not None:
                bar.update(res.stats.records_read)
    if bar is not None:
        bar.close()
    return (
        np.concatenate(lengths) if lengths else np.zeros(0, np.int64),
        np.concatenate(source_of) if source_of else np.zeros(0, np.int32),
    )


class _WeightWriter:
    """Writes loss_weight.bin only once a chunk carries weights other than 1 (float32): the tokens before it get
    their flags, read back from supervised.bin, as weights then. Unweighted data (almost all) gets no such file."""

    def __init__(self, path: str, flags_file):
        self.path, self.flags_file, self.file = path, flags_file, None

    def write(self, supervised: np.ndarray) -> None:
        if self.file is None and supervised.dtype == np.uint8:
            return
        if self.file is None:
            self.file = open(self.path, "wb")
            self.flags_file.flush()
            with open(self.flags_file.name, "rb") as flags:
                while block := flags.read(1 << 24):
                    self.file.write(np.frombuffer(block, np.uint8).astype(np.float32).tobytes())
        self.file.write(supervised.astype(np.float32).tobytes())

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()


def _pack_splits(cfg: DataConfig, sources, lengths, source_of, out_dir: str):
    """Samples (or, for preference data, pairs: samples 2p and 2p+1) are split per source, blended and packed."""
    unit = 2 if cfg.preference else 1
    sizes = padded_sizes(lengths, cfg.cp_multiple).reshape(-1, unit).sum(1)
    unit_source = source_of[::unit]
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    for index in range(len(sources)):
        ids = np.flatnonzero(unit_source == index)
        for name, chosen in zip(SPLITS, split_indices(len(ids), cfg.split_fractions, cfg.seed, index)):
            parts[name].append(ids[chosen])
    train, report = blend(parts["train"], [s.weight for s in sources], cfg.seed)
    for entry in report:
        entry["source"] = sources[entry["source"]].spec
    chosen = {"train": train, "valid": np.concatenate(parts["valid"]), "test": np.concatenate(parts["test"])}
    splits = {}
    for name, ids in chosen.items():
        ids = ids.astype(np.int64)
        offsets, items = pack(sizes[ids], cfg.seq_length, cfg.packing_algorithm)
        samples = (ids[items][:, None] * unit + np.arange(unit)).reshape(-1)  # a pair's two samples together
        np.save(os.path.join(out_dir, f"packs_{name}_offsets.npy"), offsets * unit)
        np.save(os.path.join(out_dir, f"packs_{name}_samples.npy"), samples)
        n_packs = len(offsets) - 1
        kept = (ids[:, None] * unit + np.arange(unit)).reshape(-1)
        splits[name] = {
            "conversations": len(ids),  # preference data: pairs
            "packs": n_packs,
            "tokens": int(lengths[kept].sum()),
            "fill": fill(lengths[kept], n_packs, cfg.seq_length),
        }
    return splits, report


def _progress_bar(enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(desc="preparing data", unit=" records", unit_scale=True, mininterval=1.0)
