"""quantize.py's flags (Megatron-LM's names) and the quantization formats it knows, without importing modelopt."""

from __future__ import annotations

import re
from argparse import ArgumentParser
from dataclasses import dataclass

from megatron_sft.errors import UserError


@dataclass(frozen=True)
class QuantFormat:
    modelopt_cfg: str  # the name of the config in modelopt.torch.quantization
    needs_cuda: bool  # modelopt's kernels for it exist on CUDA only
    blocks: bool = False  # weights quantized in blocks along the input dimension (size: the config's block_sizes)


# The short forms of Megatron-LM's quantize.sh; any modelopt config name (e.g. INT8_DEFAULT_CFG) is taken too.
FORMATS = {
    "fp8": QuantFormat("FP8_DEFAULT_CFG", False),
    "int8": QuantFormat("INT8_DEFAULT_CFG", False),
    "int8_sq": QuantFormat("INT8_SMOOTHQUANT_CFG", False),
    "int4_awq": QuantFormat("INT4_AWQ_CFG", False, blocks=True),
    "w4a8_awq": QuantFormat("W4A8_AWQ_BETA_CFG", False, blocks=True),
    "nvfp4": QuantFormat("NVFP4_DEFAULT_CFG", True, blocks=True),
    "mxfp8": QuantFormat("MXFP8_DEFAULT_CFG", True, blocks=True),
}
_CUDA_ONLY = re.compile(r"NVFP4|MXFP|MXINT")  # modelopt's microscaling formats: CUDA kernels only
_BLOCKED = re.compile(r"INT4|AWQ|NVFP4|MXFP|MXINT|BLOCKWISE")


def quant_format(name: str, flag: str = "--export-quant-cfg ") -> QuantFormat:
    """--export-quant-cfg: a short form, or a modelopt config name (checked against modelopt when it loads)."""
    if name in FORMATS:
        return FORMATS[name]
    if re.fullmatch(r"[A-Z0-9_]+_CFG", name):
        return QuantFormat(name, bool(_CUDA_ONLY.search(name)), bool(_BLOCKED.search(name)))
    raise UserError(f"{flag}{name}: unknown; use one of {', '.join(FORMATS)} or a config name of "
                    "modelopt.torch.quantization (e.g. INT8_DEFAULT_CFG)")


def check_cuda_format(name: str, device: str, cuda_available: bool, flag: str = "--export-quant-cfg ") -> None:
    """A CUDA-only format on a machine (or --device) without CUDA: one line, before any model is built."""
    fmt = quant_format(name, flag)
    if fmt.needs_cuda and (device == "cpu" or not cuda_available):
        where = "--device cpu" if device == "cpu" else "this machine has no CUDA device"
        raise UserError(f"{flag}{name}: {fmt.modelopt_cfg} runs on CUDA only (modelopt's kernels for "
                        f"it need a GPU) and {where}; on CPU use fp8, int8_sq, int4_awq or w4a8_awq")


def add_quantize_args(parser: ArgumentParser) -> None:
    g = parser.add_argument_group("quantization (nvidia-modelopt)")
    g.add_argument("--export-quant-cfg", help=f"format: {', '.join(FORMATS)}, or a modelopt config name "
                                              "(e.g. INT8_DEFAULT_CFG)")
    g.add_argument("--calib-size", type=int, help="calibration samples (conversations or texts), each cut to "
                                                  "--seq-length tokens")
    g.add_argument("--calib-data-path", help="calibration data: a JSONL of chat records or {\"text\": ...} lines "
                                             "(default: --data-path, the SFT data)")
    g.add_argument("--weight-only", action="store_true", help="quantize weights only (activations stay in the "
                                                               "model's dtype)")
    g.add_argument("--disable-qkv-quant", action="store_true", help="keep the attention's QKV projection "
                                                                     "unquantized")
    g.add_argument("--export-kv-cache-quant", action="store_true",
                   help="also quantize the KV cache (FP8; needs Transformer Engine's attention, i.e. a GPU)")
    g.add_argument("--num-first-layers-to-skip-quant", type=int, help="keep the first N transformer layers "
                                                                       "unquantized")
    g.add_argument("--num-last-layers-to-skip-quant", type=int, help="keep the last N transformer layers "
                                                                      "unquantized")


def check_quantize_args(cfg) -> None:
    """Refusals that need no model: every one names its flag and what to do."""
    q, fmt = cfg.quantization, quant_format(cfg.quantization.export_quant_cfg)
    if not cfg.checkpoint.save:
        raise UserError("--save is required: where the quantized checkpoint goes")
    if q.calib_size < 1:
        raise UserError(f"--calib-size {q.calib_size}: calibration needs at least one sample")
    for flag, value in (("--num-first-layers-to-skip-quant", q.num_first_layers_to_skip_quant),
                        ("--num-last-layers-to-skip-quant", q.num_last_layers_to_skip_quant)):
        if not 0 <= value <= cfg.model.num_layers:
            raise UserError(f"{flag} {value}: between 0 and the model's {cfg.model.num_layers} layers")
    if cfg.is_lora:
        raise UserError(f"--load {cfg.checkpoint.load} is a LoRA run: merge it first (convert.sh with MERGE_LORA=1 "
                        "writes the merged Hugging Face model) and quantize that (HF_MODEL_CKPT=<it>)")
    check_kv_cache_quant(cfg)
    if cfg.parallel.context_parallel_size > 1:
        raise UserError("quantize runs at --context-parallel-size 1 (calibration samples are short); a "
                        "quantized checkpoint still trains at any CP")
    if fmt.blocks:
        _check_blocks(cfg)


def check_kv_cache_quant(cfg) -> None:
    """The layer implementation is known once the device is (start-up); before that (parsing), nothing to say."""
    impl = cfg.runtime.transformer_impl
    if cfg.quantization.export_kv_cache_quant and impl not in (None, "transformer_engine"):
        raise UserError("--export-kv-cache-quant: modelopt quantizes the KV cache in Transformer Engine's "
                        "attention only; run on a GPU with Transformer Engine, or drop the flag")


def _check_blocks(cfg, block: int = 128) -> None:
    """Block formats cut each weight row into blocks of 128 inputs; a row-parallel layer's TP shard must hold whole
    blocks, or the blocks (and their scales) would differ between layouts and the checkpoint could not reshard."""
    m, p = cfg.model, cfg.parallel
    tp, etp = p.tensor_model_parallel_size, p.expert_tensor_parallel_size or p.tensor_model_parallel_size
    inputs = [("attention output (heads x head dim)", m.num_attention_heads * m.kv_channels, tp, "TP")]
    if m.num_experts:
        inputs.append(("expert down projection (moe ffn hidden size)", m.moe_ffn_hidden_size or m.ffn_hidden_size,
                       etp, "expert TP"))
    else:
        inputs.append(("MLP down projection (ffn hidden size)", m.ffn_hidden_size, tp, "TP"))
    for what, size, ranks, name in inputs:
        if size and (size // ranks) % block:
            raise UserError(f"--export-quant-cfg {cfg.quantization.export_quant_cfg}: the {what} input is {size} "
                            f"wide, {size // ranks} per tensor-parallel rank at {name} {ranks}: not a multiple of "
                            f"the {block}-wide quantization blocks; use a lower TP or another format (fp8, int8_sq)")
