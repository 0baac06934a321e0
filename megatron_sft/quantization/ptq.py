"""Post-training quantization (quantize.py / quantize.sh): load, calibrate with modelopt, save.

The model is quantized at the layout it is loaded at (any TP/PP/EP): modelopt's Megatron plugin inserts
fake quantizers into the parallel linear layers and syncs their calibrated ranges over the tensor-parallel
group, so every rank holds its shard's quantizers. The result is an ordinary Megatron checkpoint (`release/`)
plus modelopt's state, which finetune (QAT), generate, mmlu and export restore."""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import torch

from megatron_sft.arguments.quantize import check_cuda_format, check_kv_cache_quant, quant_format
from megatron_sft.config import RunConfig
from megatron_sft.checkpointing import modelopt_state
from megatron_sft.checkpointing.checkpointer import Part
from megatron_sft.checkpointing.megatron_ckpt import model_sharded_state_dict, save_checkpoint
from megatron_sft.checkpointing.names import MODELOPT_STATE
from megatron_sft.errors import UserError
from megatron_sft.inference.logits import forward_logits
from megatron_sft.loading import build_and_load, hf_assets_source, load_run_tokenizer
from megatron_sft.models.builder import unwrap
from megatron_sft.quantization.calib_data import calibration_samples, calibration_source

log = logging.getLogger(__name__)


def modelopt_config(cfg: RunConfig, module) -> dict:
    """The modelopt config of --export-quant-cfg with the flags' changes appended (later entries win)."""
    import modelopt.torch.quantization as mtq

    name = quant_format(cfg.quantization.export_quant_cfg).modelopt_cfg
    base = getattr(mtq, name, None)
    if not isinstance(base, dict) or "quant_cfg" not in base:
        raise UserError(f"--export-quant-cfg {cfg.quantization.export_quant_cfg}: nvidia-modelopt has no "
                        f"quantization config {name}")
    config = copy.deepcopy(base)
    q = cfg.quantization
    off = [*(["*input_quantizer"] if q.weight_only else []), *(["*linear_qkv*"] if q.disable_qkv_quant else []),
           *(f"*decoder.layers.{i}.*" for i in _skipped_local_layers(cfg, module))]
    kv = copy.deepcopy(mtq.FP8_KV_CFG["quant_cfg"]) if q.export_kv_cache_quant else []
    # the disables last: a layer kept unquantized keeps its KV cache unquantized too
    config["quant_cfg"] = [*config["quant_cfg"], *kv, *({"quantizer_name": p, "enable": False} for p in off)]
    return config


def _skipped_local_layers(cfg: RunConfig, module) -> list[int]:
    """This rank's indices (module names are per pipeline stage) of the layers that
    --num-first/last-layers-to-skip-quant keep unquantized."""
    n, q = cfg.model.num_layers, cfg.quantization
    first, last = q.num_first_layers_to_skip_quant, q.num_last_layers_to_skip_quant
    skipped = set(range(first)) | set(range(n - last, n))
    return [i for i, layer in enumerate(module.decoder.layers) if layer.layer_number - 1 in skipped]


def run(cfg: RunConfig) -> None:
    """The quantize app (apps.py): a CUDA-only format needs CUDA; then start, calibrate, save."""
    import torch

    from megatron_sft.startup import start

    check_cuda_format(cfg.quantization.export_quant_cfg, cfg.runtime.device, torch.cuda.is_available())
    print(f"wrote {quantize(start(cfg))}", flush=True)


def quantize(cfg: RunConfig) -> Path:
    import modelopt.torch.quantization as mtq

    check_kv_cache_quant(cfg)  # the rest was checked with the flags (apps.py); the layer implementation is known now
    chunks = build_and_load(cfg)
    if modelopt_state.model_is_quantized(chunks):
        raise UserError(f"--load {cfg.checkpoint.load} is quantized already; quantize its unquantized source")
    modelopt_state.check_single_chunk(chunks)
    device = next(unwrap(chunks[0]).parameters()).device
    samples = [s.to(device) for s in calibration_samples(cfg, load_run_tokenizer(cfg))]
    before = forward_logits(chunks, samples[0])
    config = modelopt_config(cfg, unwrap(chunks[0]))
    t0 = time.perf_counter()
    mtq.quantize(unwrap(chunks[0]), config, _calibration_loop(chunks, samples))
    seconds = time.perf_counter() - t0
    after = forward_logits(chunks, samples[0])
    change = _relative_rms(after, before)
    tokens = sum(s.numel() for s in samples)
    log.info("quantized (%s): %d enabled quantizers on this rank; calibrated on %d samples (%d tokens) in %.1f s; "
             "the logits of the first sample moved by relative RMS %s", cfg.quantization.export_quant_cfg,
             _enabled_quantizers(chunks), len(samples), tokens, seconds,
             f"{change:.3g}" if change is not None else "(on the last pipeline stage)")
    record = {"format": cfg.quantization.export_quant_cfg, "modelopt_cfg": quant_format(
        cfg.quantization.export_quant_cfg).modelopt_cfg, "flags": _flags(cfg), "source": cfg.checkpoint.load,
        "calibration": {"data": calibration_source(cfg), "samples": len(samples), "tokens": tokens,
                        "max_tokens_per_sample": max(s.numel() for s in samples)}}
    unwrap(chunks[0]).quantization_record = record  # written by modelopt_state.save, here and after QAT
    return save_checkpoint(cfg.checkpoint.save, None, model_sharded_state_dict(chunks), cfg.to_record(),
                           hf_assets_src=hf_assets_source(cfg),
                           parts=[Part(MODELOPT_STATE, lambda staging: modelopt_state.save(chunks, staging),
                                       collective=True)])


def _calibration_loop(chunks: list, samples: list):
    """modelopt calls this once per calibration pass (AWQ makes several); progress about every 10%."""
    passes = []

    def loop(_model) -> None:
        passes.append(time.perf_counter())
        step = max(1, len(samples) // 10)
        for i, sample in enumerate(samples, 1):
            # the output layer is not quantized: the last position's logits suffice (no [S, V] gather)
            forward_logits(chunks, sample, select=torch.tensor([sample.shape[1] - 1], device=sample.device))
            if i % step == 0 or i == len(samples):
                log.info("calibration pass %d: %d/%d samples (%.1f s)", len(passes), i, len(samples),
                         time.perf_counter() - passes[-1])

    return loop


def _relative_rms(a: torch.Tensor | None, b: torch.Tensor | None) -> float | None:
    if a is None or b is None:  # not the last pipeline stage
        return None
    return ((a.float() - b.float()).pow(2).mean().sqrt() / b.float().pow(2).mean().sqrt()).item()


def _enabled_quantizers(chunks: list) -> int:
    from modelopt.torch.quantization.nn import TensorQuantizer

    return sum(1 for c in chunks for m in unwrap(c).modules() if isinstance(m, TensorQuantizer) and m.is_enabled)


def _flags(cfg: RunConfig) -> dict:
    q = cfg.quantization
    return {"weight_only": q.weight_only, "disable_qkv_quant": q.disable_qkv_quant,
            "export_kv_cache_quant": q.export_kv_cache_quant,
            "num_first_layers_to_skip_quant": q.num_first_layers_to_skip_quant,
            "num_last_layers_to_skip_quant": q.num_last_layers_to_skip_quant, "calib_size": q.calib_size,
            "tensor_model_parallel_size": cfg.parallel.tensor_model_parallel_size,
            "pipeline_model_parallel_size": cfg.parallel.pipeline_model_parallel_size}
