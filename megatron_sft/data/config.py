"""Everything the data pipeline needs, as plain values (no dependency on the flag parser)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from megatron_sft.data.formats import DATA_FORMATS
from megatron_sft.errors import UserError

PACKING_ALGORITHMS = ("best_fit", "first_fit_decreasing")
DEFAULT_SPLIT = "969,30,1"  # Megatron-LM's default --split


@dataclass(frozen=True)
class DataConfig:
    """Data settings under Megatron-LM's flag dest names (`--seq-length` -> `seq_length`, ...)."""

    data_path: list[str] = field(default_factory=list)  # PATH, or PATH:N for a seeded subset of N records
    # Megatron-LM's per-split form, instead of data_path + split: each split's own sources.
    train_data_path: list[str] = field(default_factory=list)
    valid_data_path: list[str] = field(default_factory=list)
    test_data_path: list[str] = field(default_factory=list)
    finetune_hf_dataset: str | None = None
    finetune_hf_dataset_split: str = "train"
    seq_length: int | None = None  # the packed length; None: nothing is packed (generation, MMLU, conversion)
    max_sample_length: int | None = None  # longest conversation kept whole (default: seq_length)
    split: str = DEFAULT_SPLIT
    seed: int = 1234
    chat_template: str | None = None
    data_format: str = "auto"  # detect per record, or one of DATA_FORMATS for every record
    skip_invalid: bool = False
    drop_long_samples: bool = False
    unmask_user: bool = False
    eod_mask_loss: bool = False
    reset_position_ids: bool = False
    reset_attention_mask: bool = False
    data_cache_dir: str | None = None
    num_workers: int = 1  # --num-workers' default
    context_parallel_size: int = 1
    micro_batch_size: int = 1
    global_batch_size: int | None = None
    packing_algorithm: str = "best_fit"
    sample_limit: int | None = None  # --sample N in tools/prepare_data.py: read only the first N records

    @classmethod
    def from_args(cls, args, validate: bool = True) -> DataConfig:
        """Read the attributes of an argparse namespace that exist; the rest keep their defaults."""
        values = {}
        for f in fields(cls):
            if hasattr(args, f.name) and getattr(args, f.name) is not None:
                values[f.name] = getattr(args, f.name)
        if isinstance(values.get("data_path"), str):
            values["data_path"] = values["data_path"].split()
        cfg = cls(**values)
        if validate:
            cfg.validate()
        return cfg

    @property
    def split_fractions(self) -> tuple[float, float, float]:
        return parse_split(self.split)

    @property
    def per_split(self) -> bool:
        return bool(self.train_data_path or self.valid_data_path or self.test_data_path)

    @property
    def split_paths(self) -> dict[str, list[str]]:
        return {"train": self.train_data_path, "valid": self.valid_data_path, "test": self.test_data_path}

    @property
    def sample_cap(self) -> int:
        """Conversations longer than this are truncated to it (or dropped with --drop-long-samples)."""
        return self.max_sample_length or self.seq_length

    @property
    def cp_multiple(self) -> int:
        """Each sample is padded to this many tokens: THD context parallelism cuts it into 2*CP chunks."""
        return 2 * self.context_parallel_size if self.context_parallel_size > 1 else 1

    @property
    def cache_root(self) -> str:
        return self.data_cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "megatron_sft", "data")

    def validate(self) -> None:
        problems = self.problems()
        if problems:
            raise UserError("; ".join(problems))

    def problems(self, require_data: bool = True) -> list[str]:
        """Every problem of these settings, each naming its flag (require_data: a run that trains needs data)."""
        problems = self._source_problems(require_data)
        if self.seq_length is not None:  # None: nothing is packed (generation, MMLU, conversion)
            problems += self._length_problems()
        if self.data_format not in DATA_FORMATS:
            problems.append(f"--data-format {self.data_format!r} is not one of {', '.join(DATA_FORMATS)}")
        if self.packing_algorithm not in PACKING_ALGORITHMS:
            problems.append(f"packing algorithm {self.packing_algorithm!r} is not one of {PACKING_ALGORITHMS}")
        try:
            parse_split(self.split)
        except UserError as e:
            problems.append(str(e))
        return problems

    def _length_problems(self) -> list[str]:
        problems = []
        cap = self.max_sample_length
        if cap is not None and not 2 <= cap <= self.seq_length:
            problems.append(f"--max-sample-length {cap} must be between 2 and --seq-length {self.seq_length}")
        if self.seq_length < 2:
            problems.append(f"--seq-length ({self.seq_length}) must be at least 2")
        if self.context_parallel_size < 1:
            problems.append(f"--context-parallel-size ({self.context_parallel_size}) must be >= 1")
        elif self.seq_length % self.cp_multiple:
            m = self.cp_multiple
            problems.append(
                f"--seq-length ({self.seq_length}) must be a multiple of 2 x --context-parallel-size ({m}); "
                f"use {self.seq_length // m * m or m}"
            )
        return problems

    def _source_problems(self, require_data: bool) -> list[str]:
        """Megatron-LM's two ways to name data do not mix: --data-path + --split, or one path per split."""
        per_split = [f"--{s}-data-path" for s, paths in self.split_paths.items() if paths]
        if per_split:
            given = (("--data-path", self.data_path), ("--finetune-hf-dataset", self.finetune_hf_dataset),
                     ("--split", self.split != DEFAULT_SPLIT and self.split))
            mixed = [f for f, v in given if v]
            problems = [f"{' and '.join(per_split)} name each split's files: drop {' and '.join(mixed)} (or use "
                        "--data-path with --split instead)"] if mixed else []
            if not self.train_data_path:
                problems.append(f"{' and '.join(per_split)} without --train-data-path: give the training files too")
            return problems
        if require_data and not self.data_path and not self.finetune_hf_dataset:
            return ["no data: give --data-path FILE [FILE ...] or --finetune-hf-dataset NAME (or --train-data-path "
                    "with --valid-data-path)"]
        return []


def parse_split(split: str) -> tuple[float, float, float]:
    """'98,2,0' (or '98/2/0', or fewer parts) -> normalised (train, valid, test) fractions."""
    parts = [p for p in str(split).replace("/", ",").split(",") if p.strip()]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise UserError(f"--split {split!r} must be comma-separated numbers such as 98,2,0") from None
    if not 1 <= len(values) <= 3 or any(v < 0 for v in values) or sum(values) <= 0:
        raise UserError(f"--split {split!r} needs one to three non-negative numbers with a positive sum, e.g. 98,2,0")
    values += [0.0] * (3 - len(values))
    total = sum(values)
    return (values[0] / total, values[1] / total, values[2] / total)
