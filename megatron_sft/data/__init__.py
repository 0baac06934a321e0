"""Chat SFT data: formats and sources, chat-template loss masks, packing, cache, batches, sharding.

Entry points: `build_sft_datasets` (training), `SFTDataset` (custom scripts), `DataConfig`.
Names resolve lazily, so that preparation worker processes, which import only the tokenizing
modules, do not pay for importing torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DataConfig": "megatron_sft.config",
    "SFTDataset": "megatron_sft.data.dataset",
    "SFTSplits": "megatron_sft.data.dataset",
    "build_sft_datasets": "megatron_sft.data.dataset",
    "collate": "megatron_sft.data.batch",
    "pad_for_context_parallel": "megatron_sft.data.batch",
    "split_for_context_parallel": "megatron_sft.data.batch",
}
__all__ = [
    "DataConfig",
    "SFTDataset",
    "SFTSplits",
    "build_sft_datasets",
    "collate",
    "pad_for_context_parallel",
    "split_for_context_parallel",
]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'megatron_sft.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return list(__all__)
