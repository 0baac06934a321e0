"""Chat SFT data: formats and sources, chat-template loss masks, packing, cache, batches, sharding.

Entry points: `build_sft_datasets` (training), `SFTDataset` (custom scripts), `DataConfig`.
"""

from megatron_sft.data.batch import collate, pad_for_context_parallel, split_for_context_parallel
from megatron_sft.data.config import DataConfig
from megatron_sft.data.dataset import SFTDataset, SFTSplits, build_sft_datasets

__all__ = [
    "DataConfig",
    "SFTDataset",
    "SFTSplits",
    "build_sft_datasets",
    "collate",
    "pad_for_context_parallel",
    "split_for_context_parallel",
]
