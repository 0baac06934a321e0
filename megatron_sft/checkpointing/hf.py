"""Hugging Face <-> Megatron weights through nvidia-modelopt's importer and exporter."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from megatron_sft.errors import UserError

log = logging.getLogger(__name__)


def import_hf_weights(chunks: list, hf_dir: str | Path, dtype: torch.dtype) -> None:
    """Load HF safetensors into every model chunk of this rank (any TP/PP/EP layout)."""
    from modelopt.torch.export import import_mcore_gpt_from_hf

    hf_dir = Path(hf_dir)
    if not any(hf_dir.glob("*.safetensors")):
        raise UserError(f"{hf_dir}: no *.safetensors weights; give a Hugging Face model directory")
    for chunk in chunks:
        import_mcore_gpt_from_hf(chunk, str(hf_dir), dtype=dtype)
    log.info("imported Hugging Face weights from %s (%s)", hf_dir, str(dtype).replace("torch.", ""))


def export_hf_weights(chunks: list, hf_source: str | Path, out_dir: str | Path, dtype: torch.dtype) -> Path:
    """Write a Hugging Face directory with nvidia-modelopt's Megatron exporter: kept for the quantized formats it owns
    (FP8); every unquantized export goes through training/hf_output.py's writer. Must run at TP=1.

    modelopt's exporter writes wrongly shaped shards at TP>1; load the checkpoint at TP=1
    (dist_checkpointing reshards) and export there. PP is fine.
    """
    from megatron.core import parallel_state
    from modelopt.torch.export import export_mcore_gpt_to_hf

    if parallel_state.get_tensor_model_parallel_world_size() != 1:
        raise UserError("Hugging Face export runs at --tensor-model-parallel-size 1 (PP is allowed)")
    if len(chunks) != 1:
        raise UserError("Hugging Face export does not support virtual pipeline stages; drop "
                        "--num-layers-per-virtual-pipeline-stage")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    export_mcore_gpt_to_hf(chunks[0], str(hf_source), dtype=dtype, export_dir=str(out_dir))
    return out_dir

