"""HF -> Megatron and Megatron -> HF conversion (`tools/convert.py`, `examples/convert.sh`)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from megatron_sft.checkpointing import layout
from megatron_sft.checkpointing.hf import export_hf_weights
from megatron_sft.checkpointing.loading import args_record, hf_assets_source, load_weights
from megatron_sft.checkpointing.megatron_ckpt import model_sharded_state_dict, save_checkpoint
from megatron_sft.config import dtype_from_name, params_dtype, transformer_config
from megatron_sft.errors import UserError
from megatron_sft.models.builder import build_model_chunks, padded_vocab_size

log = logging.getLogger(__name__)


def build_and_load(args) -> list:
    """Model chunks for this rank's layout, with the weights --load points at."""
    chunks = build_model_chunks(args, transformer_config(args, skip_init=True), padded_vocab_size(args))
    load_weights(args, chunks)
    for chunk in chunks:
        chunk.eval()
    return chunks


def hf_to_megatron(args) -> Path:
    """Import an HF directory and save it as a weights-only `release` Megatron checkpoint."""
    import modelopt.torch.export  # noqa: F401  (loaded before the clock starts: module loading is not conversion)

    t0 = time.perf_counter()
    chunks = build_and_load(args)
    t1 = time.perf_counter()
    path = save_checkpoint(
        args.save, None, model_sharded_state_dict(chunks), args_record(args), hf_assets_src=hf_assets_source(args)
    )
    log.info("conversion timing: build+import %.1f s, save %.1f s", t1 - t0, time.perf_counter() - t1)
    return path


def megatron_to_hf(args) -> Path:
    """Export a Megatron checkpoint (loaded at TP=1, any saved layout) to an HF directory."""
    if args.tensor_model_parallel_size != 1:
        raise UserError("export to Hugging Face runs at --tensor-model-parallel-size 1; the checkpoint "
                        "is resharded on load whatever layout it was saved at")
    source = hf_assets_source(args)
    if source is None or not (Path(source) / "config.json").is_file():
        raise UserError(f"{args.load}: the checkpoint has no {layout.HF_ASSETS}/config.json and no "
                        "--pretrained-model-path was given; pass the HF directory it came from")
    chunks = build_and_load(args)
    name = getattr(args, "export_dtype", None)
    dtype = dtype_from_name(name) if name else params_dtype(args)
    if args.peft == "lora":
        from megatron_sft.peft.lora import unload_lora

        if not args.merge_lora:
            return _export_adapter(args, chunks, dtype)
        unload_lora(chunks)  # W + alpha/r * B A in every targeted layer; then a plain model to export
    return export_hf_weights(chunks, source, args.save, dtype)


def _export_adapter(args, chunks: list, dtype) -> Path:
    from megatron_sft.peft.hf_adapter import save_peft_adapter
    from megatron_sft.peft.lora import LoraSpec
    from megatron_sft.peft.model import lora_base

    base = lora_base(args)  # named in adapter_config.json when PEFT can load it (a Hugging Face directory)
    return save_peft_adapter(chunks, LoraSpec.from_args(args), args.save, base.path if base.format == "hf" else None,
                             dtype)


def convert(args) -> Path:
    if not args.save:
        raise UserError("--save is required: the output directory of the conversion")
    if args.load_format == "hf":
        return hf_to_megatron(args)
    if args.load_format == "megatron":
        return megatron_to_hf(args)
    raise UserError("--load must be a Hugging Face directory or a Megatron checkpoint")
