"""SFTDataset (usable on its own) and build_sft_datasets (what training consumes)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from megatron_sft.data.batch import build_pack, collate
from megatron_sft.data.cache import PreparedData, prepare
from megatron_sft.config import DataConfig
from megatron_sft.data.prepare import SPLITS
from megatron_sft.data.sharding import PackStream
from megatron_sft.data.stats import summary_lines
from megatron_sft.errors import UserError

log = logging.getLogger(__name__)


class SFTDataset(torch.utils.data.Dataset):
    """Chat SFT data, tokenized with the model's chat template, masked and packed.

    Reads JSONL (or JSON, Parquet, save_to_disk folders) with `messages` (multi-turn, system / user /
    assistant / tool), ShareGPT `conversations`, or single-turn Alpaca, Dolly, OpenOrca,
    prompt/completion or input/output records (`data_format`: detected per record by default;
    `PATH:N` takes a seeded subset of N records); trains on assistant turns only (plus user turns
    with `unmask_user`); packs whole samples into `seq_length` tokens with samples isolated from
    each other; pads each sample to 2*CP tokens for context parallelism.
    Item i is one packed sequence: a dict of 1-D tensors (see megatron_sft.data.batch); batch
    items with `SFTDataset.collate`. Tokenized data is cached in `cache_dir` and reused.

        ds = SFTDataset("chat.jsonl", tokenizer, seq_length=4096)
        loader = DataLoader(ds, batch_size=1, shuffle=True, collate_fn=SFTDataset.collate)
    """

    collate = staticmethod(collate)

    def __init__(
        self,
        data_path: str | list[str],
        tokenizer,
        seq_length: int = 4096,
        *,
        split: str = "train",
        split_ratio: str = "100,0,0",
        context_parallel_size: int = 1,
        unmask_user: bool = False,
        chat_template: str | None = None,
        data_format: str = "auto",
        drop_long_samples: bool = False,
        skip_invalid: bool = False,
        seed: int = 1234,
        cache_dir: str | None = None,
        num_workers: int = 1,
        progress: bool = False,
    ):
        cfg = DataConfig(
            data_path=[data_path] if isinstance(data_path, str) else list(data_path),
            seq_length=seq_length,
            split=split_ratio,
            context_parallel_size=context_parallel_size,
            unmask_user=unmask_user,
            chat_template=chat_template,
            data_format=data_format,
            drop_long_samples=drop_long_samples,
            skip_invalid=skip_invalid,
            seed=seed,
            data_cache_dir=cache_dir,
            num_workers=num_workers,
        )
        cfg.validate()
        self._init(prepare(cfg, tokenizer, is_builder=True, progress=progress), split, cfg)

    @classmethod
    def from_prepared(cls, prepared: PreparedData, split: str, cfg: DataConfig) -> SFTDataset:
        ds = cls.__new__(cls)
        ds._init(prepared, split, cfg)
        return ds

    def _init(self, prepared: PreparedData, split: str, cfg: DataConfig) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.prepared, self.split, self.seq_length = prepared, split, cfg.seq_length
        self.cp_multiple, self.pad_token_id = cfg.cp_multiple, prepared.pad_token_id
        self.per_sample = cfg.loss_normalization == "sample"
        self.pack_offsets, self.pack_samples = prepared.packs(split)

    def __getstate__(self) -> dict:  # pickled for DataLoader workers: re-open, never copy, the arrays
        return {
            "prepared": self.prepared,
            "split": self.split,
            "seq_length": self.seq_length,
            "cp_multiple": self.cp_multiple,
            "per_sample": self.per_sample,
        }

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.pad_token_id = self.prepared.pad_token_id
        self.pack_offsets, self.pack_samples = self.prepared.packs(self.split)

    @property
    def stats(self) -> dict:
        """metadata.json of the cache: counts, drops and why, tokens, fill, length histogram."""
        return self.prepared.meta

    @property
    def num_conversations(self) -> int:
        return int(self.prepared.meta["splits"][self.split]["conversations"])

    def __len__(self) -> int:
        return len(self.pack_offsets) - 1

    def samples_of(self, i: int) -> list[int]:
        """Ids of the samples (conversations) in pack i, in pack order."""
        return [int(s) for s in self.pack_samples[self.pack_offsets[i] : self.pack_offsets[i + 1]]]

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"pack {i} out of range [0, {len(self)})")
        ids = self.samples_of(i)
        row = build_pack([self.prepared.sample(s) for s in ids], self.seq_length, self.pad_token_id, self.cp_multiple,
                         self.per_sample)
        row["sample_ids"] = torch.tensor(ids, dtype=torch.int64)  # in segment order (preference data: c0 r0 c1 ...)
        row["sample_sources"] = torch.from_numpy(np.asarray(self.prepared.sample_source[ids], dtype=np.int64))
        return row


@dataclass
class SFTSplits:
    """Per split, an endless stream of micro-batches for this data-parallel rank (None: empty split)."""

    train: PackStream
    valid: PackStream | None
    test: PackStream | None
    stats: dict
    cache_dir: str
    valid_cache_dir: str | None = None  # the validation split's cache: its own with --valid-data-path, else cache_dir
    valid_stats: dict | None = None  # metadata.json of that cache
    # --multiple-validation-sets: (name, stream) per --valid-data-path file, each its own cache; valid is None then
    valid_sets: list[tuple[str, PackStream]] = field(default_factory=list)

    @property
    def weighted(self) -> bool:
        """Whether the training data's messages carry loss weights other than 1 (fractional loss-mask entries)."""
        return bool(self.stats.get("weighted"))

    @property
    def train_sources(self) -> list[str]:
        """Short names of the training split's data sources (the cache's metadata)."""
        from megatron_sft.data.cache import source_names

        return source_names([s["spec"] for s in self.stats["sources"]])

    @property
    def valid_sources(self) -> list[str]:
        from megatron_sft.data.cache import source_names

        return source_names([s["spec"] for s in (self.valid_stats or self.stats)["sources"]])


def build_sft_datasets(
    cfg: DataConfig, tokenizer, *, dp_rank: int, dp_size: int, consumed_samples: int = 0
) -> SFTSplits:
    """Prepare (or reuse) the cache and return the train/valid/test streams of one DP rank.

    Either one set of sources cut by --split, or (Megatron-LM's per-split form) one set per split from
    --train-data-path / --valid-data-path / --test-data-path, each prepared as a whole.
    """
    cfg.validate()
    if cfg.per_split:
        sets = cfg.multiple_validation_sets  # then each validation file is prepared (and streamed) alone, below
        parts = {name: _prepared_split(cfg, [] if sets and name == "valid" else paths, tokenizer, dp_rank)
                 for name, paths in cfg.split_paths.items()}
    else:
        prepared = prepare(cfg, tokenizer, progress=dp_rank == 0)
        _log_notices(cfg, prepared)
        parts = {name: (SFTDataset.from_prepared(prepared, name, cfg), prepared) for name in SPLITS}
    streams = {}
    for name, (ds, _) in parts.items():
        if ds is None or len(ds) == 0:
            if name == "train":
                raise UserError(f"the training split is empty ({_split_source(cfg)}); give it data")
            if name == "valid" and not cfg.multiple_validation_sets:
                log.info("data: the validation split is empty (%s): evaluation is skipped", _split_source(cfg))
            streams[name] = None
            continue
        streams[name] = _stream(ds, cfg, dp_rank, dp_size, name, consumed_samples if name == "train" else 0)
    train, valid = parts["train"][1], parts["valid"][1]
    splits = SFTSplits(streams["train"], streams["valid"], streams["test"], train.meta, train.path,
                       valid.path if valid is not None else train.path, valid.meta if valid is not None else None)
    if cfg.multiple_validation_sets:
        splits.valid_sets = _validation_sets(cfg, tokenizer, dp_rank, dp_size)
    return splits


def _stream(ds: SFTDataset, cfg: DataConfig, dp_rank: int, dp_size: int, name: str, consumed: int) -> PackStream:
    return PackStream(len(ds), ds.__getitem__, collate, dp_rank=dp_rank, dp_size=dp_size,
                      micro_batch_size=cfg.micro_batch_size, consumed_samples=consumed, shuffle=name == "train",
                      seed=cfg.seed, conversations_per_epoch=ds.num_conversations, name=name)


def _validation_sets(cfg: DataConfig, tokenizer, dp_rank: int, dp_size: int) -> list[tuple[str, PackStream]]:
    """--multiple-validation-sets: each --valid-data-path file prepared alone, named as the file (sources.py)."""
    from megatron_sft.data.cache import source_names

    paths = [t for item in cfg.valid_data_path for t in str(item).split()]
    sets = []
    for name, path in zip(source_names(paths), paths):
        ds, _ = _prepared_split(cfg, [path], tokenizer, dp_rank)
        if len(ds) == 0:
            raise UserError(f"--valid-data-path {path}: no conversation to validate on; remove it or give it data")
        sets.append((name, _stream(ds, cfg, dp_rank, dp_size, "valid", 0)))
    return sets


def prepare_training_split(cfg: DataConfig, tokenizer) -> PreparedData:
    """The cache whose "train" split training reads: --data-path's, or --train-data-path's own (built here if
    missing; the run then reuses it)."""
    cfg.validate()
    if cfg.per_split:
        return _prepared_split(cfg, cfg.train_data_path, tokenizer, 0)[1]
    return prepare(cfg, tokenizer, is_builder=True)


def _prepared_split(cfg: DataConfig, paths: list[str], tokenizer, dp_rank: int):
    """(dataset, cache) of one --<split>-data-path: its sources whole, in a cache of their own."""
    if not paths:
        return None, None
    whole = dataclasses.replace(cfg, data_path=list(paths), finetune_hf_dataset=None, split="100,0,0",
                                train_data_path=[], valid_data_path=[], test_data_path=[])
    prepared = prepare(whole, tokenizer, progress=dp_rank == 0)
    _log_notices(whole, prepared)
    return SFTDataset.from_prepared(prepared, "train", whole), prepared


def _split_source(cfg: DataConfig) -> str:
    return "--train/valid/test-data-path" if cfg.per_split else f"--split {cfg.split}"


def _log_notices(cfg: DataConfig, prepared: PreparedData) -> None:
    for line in summary_lines(prepared.meta):
        log.info("data: %s", line)
    if cfg.reset_position_ids or cfg.reset_attention_mask:
        log.info(
            "data: --reset-position-ids/--reset-attention-mask are what packing always does: position ids "
            "restart and attention stays inside each sample (block-diagonal mask, cu_seqlens)"
        )
    if cfg.eod_mask_loss:
        eot = prepared.meta["template"]["end_of_turn"]
        log.info(
            "data: --eod-mask-loss masks the padding token (id %d) only; end-of-turn %s stays trained, and "
            "padding between samples never had loss",
            prepared.pad_token_id,
            eot,
        )
