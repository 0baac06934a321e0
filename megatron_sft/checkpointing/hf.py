"""Hugging Face <-> Megatron weights through nvidia-modelopt's importer and exporter."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from megatron_sft.errors import UserError

log = logging.getLogger(__name__)


# Names nvidia-modelopt's import tables read that transformers writes otherwise: NemotronH's embedding is
# `backbone.embeddings.weight` in its tables and on the Hub, `backbone.embedding.weight` as transformers 5.14.1 saves.
ALIASES = {"backbone.embeddings.weight": "backbone.embedding.weight"}


def shard_rows(t: torch.Tensor, parts: tuple[int, ...], rank: int, world: int) -> torch.Tensor:
    """This rank's rows of a weight made of row blocks `parts` (each block split over `world` ranks apart)."""
    return torch.cat([block.chunk(world, 0)[rank] for block in torch.split(t, list(parts), 0)])


def _importer(chunk, hf_dir: Path, dtype: torch.dtype):
    """modelopt's importer, reading a tensor under its other name (ALIASES) when the first is absent, and loading
    Mamba layers itself: modelopt's NemotronH rules copy whole tensors into tensor-parallel shards and slice
    in_proj as one block (wrong at TP > 1)."""
    from modelopt.torch.export.unified_export_megatron import GPTModelImporter

    class Importer(GPTModelImporter):
        def _get_safetensor(self, key, parallel_config=None):
            try:
                return super()._get_safetensor(key, parallel_config)
            except ValueError:
                if key not in ALIASES:
                    raise
                return super()._get_safetensor(ALIASES[key], parallel_config)

        def _import_mamba_layer(self, layer, layer_id, layer_pbar):
            load_mamba_layer(layer, lambda name: self._get_safetensor(f"backbone.layers.{layer_id}.{name}"))

    return Importer(chunk, str(hf_dir), dtype=dtype)


@torch.no_grad()
def load_mamba_layer(layer, read) -> None:
    """A MambaLayer's weights from whole Hugging Face tensors (`read(name)`), sliced for this tensor-parallel rank."""
    from megatron.core import parallel_state as ps

    from megatron_sft.checkpointing.hf_tensors import mamba_row_parts

    mixer, rank, world = layer.mixer, ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
    parts = mamba_row_parts(mixer)
    by_rows = {"in_proj.weight": parts["in_proj"], "conv1d.weight": parts["conv1d"], "conv1d.bias": parts["conv1d"],
               "A_log": (mixer.nheads,), "D": (mixer.D.shape[0] * world,), "dt_bias": (mixer.nheads,),
               "norm.weight": (mixer.d_inner,)}
    targets = dict(mixer.named_parameters())
    for name, rows in by_rows.items():
        targets[name].copy_(shard_rows(read(f"mixer.{name}"), rows, rank, world))
    out = read("mixer.out_proj.weight")
    mixer.out_proj.weight.copy_(out.chunk(world, 1)[rank])
    layer.norm.weight.copy_(read("norm.weight"))


def import_hf_weights(chunks: list, hf_dir: str | Path, dtype: torch.dtype) -> None:
    """Load HF safetensors into every model chunk of this rank (any TP/PP/EP layout)."""
    hf_dir = Path(hf_dir)
    if not any(hf_dir.glob("*.safetensors")):
        raise UserError(f"{hf_dir}: no *.safetensors weights; give a Hugging Face model directory")
    for chunk in chunks:
        _importer(chunk, hf_dir, dtype)._import_state_dict()
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

