"""Calibration samples: the SFT data rendered with the run's chat template, or any JSONL of texts.

Each sample is one record (a conversation or a {"text": ...} line), in file order, cut to --seq-length tokens:
the same sequences whatever the parallel layout, so a TP=2 calibration sees what a TP=1 one sees."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import torch

from megatron_sft.data.formats import NothingToTrain, to_conversation
from megatron_sft.data.prepare import read_chat_template
from megatron_sft.data.render import ChatRenderer
from megatron_sft.data.sources import split_subset
from megatron_sft.errors import UserError

log = logging.getLogger(__name__)
DEFAULT_CALIB_LENGTH = 2048  # tokens per calibration sample when --seq-length is not given


def calibration_source(cfg) -> str:
    """--calib-data-path, else the SFT data (--data-path's first file, or --finetune-hf-dataset)."""
    source = cfg.quantization.calib_data_path
    if source is None and cfg.data.data_path:
        source = split_subset(cfg.data.data_path[0], "--data-path")[0]  # PATH:N -> PATH
    source = source or cfg.data.finetune_hf_dataset
    if source is None:
        raise UserError("no calibration data: pass --calib-data-path (a JSONL of chat records or texts), or "
                        "--data-path / DATASET (the SFT data)")
    return source


def _records(source: str, split: str) -> Iterator[tuple[str, object]]:
    """(where, record) of a local JSONL file, or of a Hugging Face dataset (streamed: only what is used)."""
    if Path(source).exists():
        if Path(source).is_dir():
            raise UserError(f"calibration data {source}: a directory; name one JSONL file (--calib-data-path)")
        with open(source, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield f"{source}:{n}", json.loads(line)
                    except json.JSONDecodeError as err:
                        raise UserError(f"{source}:{n}: not JSON ({err.msg}); calibration reads JSONL") from None
        return
    import datasets

    for n, record in enumerate(datasets.load_dataset(source, split=split, streaming=True), 1):
        yield f"{source}[{n}]", record


def _text(where: str, record, renderer: ChatRenderer) -> str | None:
    if isinstance(record, dict) and isinstance(record.get("text"), str):
        return record["text"]
    try:
        conv = to_conversation(record, where)
    except NothingToTrain:
        conv = None
    if conv is None:
        return None
    return renderer.render_text([conv.messages], tools=conv.tools)[0]


def calibration_samples(cfg, tokenizer) -> list[torch.Tensor]:
    """Up to --calib-size token sequences ([1, n] int64, on the CPU), each at most --seq-length long; under sequence
    parallelism cut to a multiple of TP (the sequence is split over the TP ranks)."""
    source = calibration_source(cfg)
    renderer = ChatRenderer(tokenizer, read_chat_template(cfg.data.chat_template))
    limit, size = cfg.data.seq_length or DEFAULT_CALIB_LENGTH, cfg.quantization.calib_size
    multiple = cfg.parallel.tensor_model_parallel_size if cfg.parallel.sequence_parallel else 1
    samples = []
    for where, record in _records(source, cfg.data.finetune_hf_dataset_split):
        text = _text(where, record, renderer)
        if text is None:
            continue
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:limit]
        ids = ids[: len(ids) - len(ids) % multiple]
        if ids:
            samples.append(torch.tensor([ids], dtype=torch.long))
        if len(samples) == size:
            break
    if not samples:
        raise UserError(f"calibration data {source}: no usable record (chat records with an assistant turn, "
                        "or {\"text\": ...} lines)")
    if len(samples) < size:
        log.warning("calibration: %s has %d usable records, fewer than --calib-size %d; calibrating on those",
                    source, len(samples), size)
    return samples
