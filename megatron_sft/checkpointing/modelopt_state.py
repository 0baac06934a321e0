"""The nvidia-modelopt state of a quantized model, saved with and restored from a Megatron checkpoint.

A quantized checkpoint holds two things: `modelopt_state/` (which modelopt modes were applied, with which
config; Megatron-LM's layout, written by modelopt's own function) and, inside the model's state dict, every
quantizer's calibrated values (`*_quantizer._amax`, AWQ's `_pre_quant_scale`, ...) as sharded tensors, so they
reshard with the weights. Restoring turns a freshly built model into the same quantized model before its
weights (and the quantizer values with them) are loaded: `restore` first, then the usual load.

`quantization.json` records what `quantize` did (format, calibration), for people and for error messages.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import torch

from megatron_sft.checkpointing.layout import CheckpointDir
from megatron_sft.checkpointing.names import QUANT_RECORD
from megatron_sft.errors import UserError
from megatron_sft.models.builder import unwrap

RECORD = QUANT_RECORD


def describe(ckpt_dir: str | Path) -> str:
    record = CheckpointDir(ckpt_dir).quant_record()
    return record.get("format") or "format not recorded"


def model_is_quantized(chunks: list) -> bool:
    mto = sys.modules.get("modelopt.torch.opt")
    if mto is None:  # never imported: nothing can have been converted (and the check stays free)
        return False
    return any(mto.ModeloptStateManager.is_converted(unwrap(c)) for c in chunks)


def save(chunks: list, staging: Path) -> None:
    """Collective (every rank): write `modelopt_state/` (and rank 0 the quantization record) into the checkpoint
    being staged. No-op when the model is not quantized. The quantizer values are in the model's state dict."""
    if not model_is_quantized(chunks):
        return
    from modelopt.torch.opt.plugins.mcore_dist_checkpointing import save_sharded_modelopt_state

    check_single_chunk(chunks)
    save_sharded_modelopt_state([unwrap(chunks[0])], str(staging))
    record = getattr(unwrap(chunks[0]), "quantization_record", None)
    if record and (not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0):
        (staging / RECORD).write_text(json.dumps(record, indent=1))


@torch.no_grad()
def restore(chunks: list, ckpt_dir: str | Path) -> None:
    """Make freshly built `chunks` the quantized model saved in `ckpt_dir`; its weights are loaded afterwards.

    modelopt's restore re-derives each weight quantizer's shape from the weight it guards, so weights built
    without initialisation (torch.empty: any bytes, NaN included) are zeroed first; the load replaces them."""
    from modelopt.torch.opt.plugins.mcore_dist_checkpointing import restore_sharded_modelopt_state

    check_single_chunk(chunks)
    module = unwrap(chunks[0])
    for param in module.parameters():
        param.zero_()
    holder = [module]
    restore_sharded_modelopt_state(holder, str(ckpt_dir))
    if holder[0] is not module:  # modelopt converts in place for Megatron modules; anything else is unexpected
        raise RuntimeError("modelopt restore returned a new module; the model chunks would not be quantized")
    module.quantization_record = CheckpointDir(ckpt_dir).quant_record()  # carried into the checkpoints trained from it (QAT)


# A quantizer value with one entry per output row of a SwiGLU fc1 ([gate; up] stacked): per-channel or per-block
# weight amax (INT8, INT4), and scales.
_FC1_ROWS = re.compile(r"linear_fc1\.weight_quantizer\.(\d+\.)*_(amax|scale)$")


def shard_fc1_rows_as_swiglu(chunk, state: dict) -> dict:
    """Give per-row quantizer values of SwiGLU's fc1 the weight's own sharding: each TP rank holds its share of
    the gate rows and its share of the up rows, not one contiguous block of [gate; up].

    modelopt (0.46.1) means to do this (`_QuantMegatronMLP._modelopt_state_keys`) but tests its patterns with
    `re.match`, which anchors them at the start of the key, so they never match; saved at one TP and loaded at
    another, an INT8/INT4 model then scales its fc1 rows with another row's range (TP 1 -> TP 2 moved the
    logits by 0.013). Applied on save and on load alike, so the keys agree; only to checkpoints this project
    quantized (they carry quantization.json): one from Megatron-LM keeps its own layout."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor
    from megatron.core.transformer.mlp import apply_swiglu_sharded_factory

    module = unwrap(chunk)
    if not getattr(module.config, "gated_linear_unit", False) or not getattr(module, "quantization_record", None):
        return state
    for key, value in state.items():
        if isinstance(value, ShardedTensor) and _FC1_ROWS.search(key) and value.local_shape[0] > 1:
            p = value.prepend_axis_num  # the expert axis of a SequentialMLP's experts
            offsets = tuple((i, value.global_offset[i], value.axis_fragmentations[i]) for i in range(p))
            state[key] = apply_swiglu_sharded_factory(value, offsets)
    return state


def check_single_chunk(chunks: list) -> None:
    if len(chunks) != 1:
        raise UserError("a quantized model cannot use virtual pipeline stages (modelopt's Megatron checkpoint "
                        "state has one model chunk per rank); drop --num-layers-per-virtual-pipeline-stage")
