"""HF -> Megatron and Megatron -> HF conversion (`tools/convert.py`, `examples/convert.sh`)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from megatron_sft.config import RunConfig
from megatron_sft.checkpointing import layout
from megatron_sft.checkpointing.hf import export_hf_weights
from megatron_sft.checkpointing.megatron_ckpt import model_sharded_state_dict, save_checkpoint
from megatron_sft.to_mcore import dtype_from_name
from megatron_sft.errors import UserError
from megatron_sft.loading import build_and_load, hf_assets_source

log = logging.getLogger(__name__)


def hf_to_megatron(cfg: RunConfig) -> Path:
    """Import an HF directory and save it as a weights-only `release` Megatron checkpoint."""
    import modelopt.torch.export  # noqa: F401  (loaded before the clock starts: module loading is not conversion)

    t0 = time.perf_counter()
    chunks = build_and_load(cfg)
    t1 = time.perf_counter()
    path = save_checkpoint(
        cfg.checkpoint.save, None, model_sharded_state_dict(chunks), cfg.to_record(),
        hf_assets_src=hf_assets_source(cfg),
    )
    log.info("conversion timing: build+import %.1f s, save %.1f s", t1 - t0, time.perf_counter() - t1)
    return path


def megatron_to_hf(cfg: RunConfig) -> Path:
    """Export a Megatron checkpoint to a Hugging Face directory: unquantized through the project's writer (the one
    --save-hf uses: any layout, staged, parity.json, manifest.json); quantized through nvidia-modelopt's exporters,
    which run at TP=1."""
    source = hf_assets_source(cfg)
    if source is None or not (Path(source) / "config.json").is_file():
        raise UserError(f"{cfg.checkpoint.load}: the checkpoint has no {layout.HF_ASSETS}/config.json and no "
                        "--pretrained-model-path was given; pass the HF directory it came from")
    path = quantized_export_path(cfg)
    if path is None and cfg.model.moe_grouped_gemm:  # grouped-GEMM experts: nvidia-modelopt's exporter writes them
        path = "megatron"
    target = _check_export_target(Path(cfg.checkpoint.save)) if path is None else None
    _check_peft_loadable(cfg)
    if path is not None and cfg.parallel.tensor_model_parallel_size != 1:
        raise UserError("a quantized or grouped-GEMM checkpoint is exported at --tensor-model-parallel-size 1 "
                        "(nvidia-modelopt's exporters); it is resharded on load whatever layout it was saved at")
    chunks = build_and_load(cfg)
    dtype = dtype_from_name(cfg.checkpoint.export_dtype)  # derived: the run's dtype unless given
    if path == "hf":
        from megatron_sft.quantization.hf_export import export_quantized_hf

        return export_quantized_hf(cfg, chunks, source, dtype)
    if path == "megatron":
        return export_hf_weights(chunks, source, cfg.checkpoint.save, dtype)
    from megatron_sft.training.hf_output import HfOutput, write_hf

    lora = _lora_of(cfg) if cfg.is_lora else None
    spec = HfOutput(dtype, cfg.lora.merge_lora, lora, adapter=not cfg.lora.merge_lora, who="convert")
    return write_hf(chunks, target, Path(source), spec)


def _check_peft_loadable(cfg: RunConfig) -> None:
    from megatron_sft.peft.hf_adapter import peft_unloadable

    refused = peft_unloadable(cfg.lora.lora_target_modules, bool(cfg.model.hybrid_override_pattern)) \
        if cfg.is_lora and not cfg.lora.merge_lora else []
    if refused:
        raise UserError(f"{cfg.checkpoint.load}: its adapters on {', '.join(refused)} cannot be a PEFT adapter (peft "
                        "refuses LoRA there on Mamba models); export the merged model: MERGE_LORA=1 (--merge-lora)")


def _lora_of(cfg: RunConfig):
    """The adapters' spec and base, as the writer needs them (the base is named in adapter_config.json)."""
    from megatron_sft.peft.lora import LoraSpec
    from megatron_sft.peft.model import LoraModel, lora_base

    return LoraModel(LoraSpec.from_config(cfg), lora_base(cfg), record_text="", checkpoint_dir=None, iteration=None)


def _check_export_target(out: Path) -> Path:
    """The export is staged beside --save and replaces it whole: --save must be new, empty or an earlier export of
    this writer (parity.json and manifest.json, no checkpoint files), and its parent writable. Returns it resolved."""
    from megatron_sft.checkpointing.names import MANIFEST, PARITY, RUN_ARGS

    out = out.expanduser().resolve()
    earlier = (out / MANIFEST).is_file() and (out / PARITY).is_file() and not (out / RUN_ARGS).exists()
    if out.is_dir() and any(out.iterdir()) and not earlier:
        raise UserError(f"--save {out}: the directory holds files that are not an earlier export of this tool (no "
                        f"{PARITY} and {MANIFEST}, or a checkpoint's {RUN_ARGS}); the export replaces its directory "
                        "whole: choose a new or empty directory")
    if out.parent == out or not os.access(out.parent, os.W_OK):
        raise UserError(f"--save {out}: the export is written beside it, in {out.parent}, which cannot be written; "
                        "choose a directory whose parent is writable")
    return out


# The quantized formats written by nvidia-modelopt's Megatron exporter (as convert.sh's export). Checked with
# 0.46.1: FP8 exports (verified here); NVFP4 is in its table but needs CUDA (not verified here). The others
# (SmoothQuant and AWQ scales, per-channel INT8, INT4 blocks) go through its Hugging Face exporter: hf_export.py.
MEGATRON_EXPORTER = {"FP8_DEFAULT_CFG", "NVFP4_DEFAULT_CFG"}


def quantized_export_path(cfg: RunConfig) -> str | None:
    """Before any model is built: None (not quantized), "megatron" or "hf" (which exporter writes the format);
    a format neither writes, or a layout the Hugging Face path cannot take, is one line."""
    from megatron_sft.quantization.hf_export import HF_PATH

    ckpt_dir = layout.latest_checkpoint_dir(cfg.checkpoint.load, cfg.checkpoint.ckpt_step)[0]
    view = layout.CheckpointDir(ckpt_dir)
    if not view.is_quantized:
        return None
    record = view.quant_record()
    name = record.get("modelopt_cfg")
    if name is None or name in MEGATRON_EXPORTER:  # quantized elsewhere (Megatron-LM): its own exporter's call
        return "megatron"
    if name not in HF_PATH:
        formats = ", ".join(sorted(MEGATRON_EXPORTER | HF_PATH))
        raise UserError(f"{ckpt_dir} is quantized with {name}, which the export cannot write (it writes {formats}); "
                        "generate.sh and mmlu.sh run it fake-quantized")
    where = f"{ckpt_dir} ({name})"
    if cfg.parallel.pipeline_model_parallel_size > 1:
        raise UserError(f"{where}: this format is exported in one process; set PP=1 (the checkpoint is resharded "
                        "on load whatever layout it was saved at)")
    if cfg.model.num_experts:
        raise UserError(f"{where}: this format's export supports dense models; quantize a mixture-of-experts "
                        "model with fp8 to export it")
    flags = record.get("flags") or {}
    if name == "W4A8_AWQ_BETA_CFG" and flags.get("weight_only"):
        raise UserError(f"{where}: W4A8 with --weight-only has no activation scales for the engine's 8-bit "
                        "activations; quantize with int4_awq for a weight-only INT4 model")
    if flags.get("export_kv_cache_quant"):
        raise UserError(f"{where}: this format's export does not write a quantized KV cache; quantize without "
                        "--export-kv-cache-quant, or with fp8")
    return "hf"


def run(cfg: RunConfig) -> None:
    """The convert and export apps (apps.py)."""
    from megatron_sft.startup import start

    print(f"wrote {convert(start(cfg))}", flush=True)


def convert(cfg: RunConfig) -> Path:
    if not cfg.checkpoint.save:
        raise UserError("--save is required: the output directory of the conversion")
    if cfg.checkpoint.load_format == "hf":
        return hf_to_megatron(cfg)
    if cfg.checkpoint.load_format == "megatron":
        return megatron_to_hf(cfg)
    raise UserError("--load must be a Hugging Face directory or a Megatron checkpoint")
