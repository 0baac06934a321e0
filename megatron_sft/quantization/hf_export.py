"""Quantized Hugging Face export of the formats modelopt's Megatron exporter cannot write (INT4-AWQ, INT8, W4A8).

nvidia-modelopt 0.46.1's Megatron exporter (the FP8 path of export.sh) raises on SmoothQuant/AWQ scales and writes
INT4 blocks unquantized. Its Hugging Face exporter writes them all. So the Megatron model is handed to it as the
transformers model it came from:

    1. the Megatron weights, under Hugging Face names (hf_tensors, the names and q/k/v and gate/up splits of
       modelopt's own mapping), into a transformers model in bf16 (the exporter's dtype for these formats);
    2. that model quantized with the same modelopt config, calibrated by max on one dummy sample: this only
       creates the quantizers, with the shapes their values need;
    3. every quantizer value replaced by the Megatron one (calibrated amax, AWQ/SmoothQuant pre_quant_scale),
       row values split as the rows of their weight, shared ones (input ranges, pre_quant_scale, per-tensor amax)
       given to each part; a quantizer Megatron disabled (--disable-qkv-quant, skipped layers) disabled too;
    4. `export_hf_checkpoint`: packed low-bit weights, scales, `hf_quant_config.json`, `quantization_config`.

For the AWQ formats the exporter folds the pre_quant_scale of q/k/v into input_layernorm and that of gate/up
into post_attention_layernorm (they read the same input) and keeps o_proj's and down_proj's as tensors; for
SmoothQuant it keeps every pre_quant_scale as a tensor.
"""

from __future__ import annotations

import copy
import logging
import shutil
from pathlib import Path

import torch

from megatron_sft.checkpointing import layout
from megatron_sft.checkpointing.hf_tensors import LayerExporter, apply_rule
from megatron_sft.models.builder import unwrap

log = logging.getLogger(__name__)

# modelopt configs written through the Hugging Face exporter (verified on CPU with 0.46.1, tests/distributed/
# test_quantization.py); FP8 goes through the Megatron exporter.
HF_PATH = {"INT4_AWQ_CFG", "INT4_BLOCKWISE_WEIGHT_ONLY_CFG", "INT8_SMOOTHQUANT_CFG", "INT8_DEFAULT_CFG",
           "W4A8_AWQ_BETA_CFG"}
_QUANTIZERS = ("input_quantizer", "weight_quantizer", "output_quantizer")
_NOT_COPIED = ("config.json", "gguf_source.json")  # config.json is the exporter's (it names the format)


class _QuantizedLayerExporter(LayerExporter):
    """The weights under Hugging Face names, and beside each weight its module's quantizer values and switches:
    `<hf module>.<quantizer>[.<i>]._amax`, `._pre_quant_scale`, and `<hf module>.<quantizer>[.<i>]` -> enabled."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.enabled: dict[str, bool] = {}

    def _map(self, key: str, module, *ids, gated: bool = False) -> dict:
        out = super()._map(key, module, *ids, gated=gated)
        if not hasattr(module, "weight_quantizer"):
            return out
        rule, rows = self.rules[key], module.weight.shape[0]
        targets = _targets(rule, self.config, rows, ids)
        row_values, shared = {}, {}
        for name, quantizer in _quantizers(module):
            for targ in targets:
                self.enabled[f"{targ}.{name}"] = quantizer.is_enabled
            for buf in ("_amax", "_pre_quant_scale"):
                value = getattr(quantizer, buf, None)
                if value is None:
                    continue
                value = value.detach().float().cpu()
                # a weight's amax with an entry per row (per channel) or per row and block: split like the rows
                per_row = buf == "_amax" and name.startswith("weight_quantizer") and value.numel() > 1
                if per_row and value.numel() % rows == 0:
                    row_values[f"{name}.{buf}"] = value.reshape(rows, -1)
                else:
                    shared[f"{name}.{buf}"] = value
        out.update(apply_rule(rule, row_values, self.config, *ids))
        out.update({f"{targ}.{k}": v for targ in targets for k, v in shared.items()})
        return out


def _quantizers(module):
    """(name, TensorQuantizer) of a quantized linear; a SequentialQuantizer's stages (W4A8) as name.i."""
    from modelopt.torch.quantization.nn import SequentialQuantizer

    for name in _QUANTIZERS:
        q = getattr(module, name, None)
        if isinstance(q, SequentialQuantizer):
            yield from ((f"{name}.{i}", stage) for i, stage in enumerate(q))
        elif q is not None:
            yield name, q


def _targets(rule, config, rows: int, ids) -> list[str]:
    """The Hugging Face modules one Megatron module becomes (q/k/v, gate/up, or itself), by the rule's own split."""
    names = apply_rule(rule, {"weight": torch.zeros(rows, 1)}, config, *ids)
    return [name.removesuffix(".weight") for name in names]


def export_quantized_hf(cfg, chunks: list, source: str | Path, dtype: torch.dtype) -> Path:
    """Write `cfg.checkpoint.save` from the quantized Megatron model `chunks`: one process (TP=1, PP=1), a dense
    model; conversion.quantized_export_path checks both before the model is built."""
    import modelopt.torch.quantization as mtq
    from modelopt.torch.export import export_hf_checkpoint
    from transformers import AutoConfig, AutoModelForCausalLM

    model = unwrap(chunks[0])
    if dtype not in (torch.bfloat16, torch.float16):
        log.warning("export: the weights are quantized from bf16 and the unquantized tensors written in bf16 "
                    "(modelopt's Hugging Face exporter takes bf16 or fp16: EXPORT_DTYPE=fp16 for fp16)")
        dtype = torch.bfloat16
    name = model.quantization_record.get("modelopt_cfg")
    log.info("export of %s through modelopt's Hugging Face exporter: the weights into a transformers model (%s), "
             "its quantizers given the Megatron values, then the files", name, str(dtype).replace("torch.", ""))
    hf_config = AutoConfig.from_pretrained(source)
    exporter = _QuantizedLayerExporter(model, cfg.model.hf_architecture, dtype, hf_config.vocab_size)
    tensors = {k: v for piece in exporter.pieces() for k, v in piece.tensors.items()}
    values = {k: tensors.pop(k) for k in [k for k in tensors if "_quantizer" in k]}
    hf = AutoModelForCausalLM.from_config(hf_config, dtype=dtype).eval()
    _load_weights(hf, tensors)
    del tensors  # the transformers model holds the weights now
    config = copy.deepcopy(getattr(mtq, name))
    config["algorithm"] = "max"  # creates the quantizers; their values are Megatron's, set next
    mtq.quantize(hf, config, lambda m: m(torch.zeros(1, 8, dtype=torch.long)))
    _set_quantizers(hf, values, exporter.enabled)
    out = Path(cfg.checkpoint.save)
    export_hf_checkpoint(hf, dtype=dtype, export_dir=str(out))
    for path in Path(source).iterdir():  # tokenizer, chat template, the model's own generation defaults
        if path.is_file() and path.name not in _NOT_COPIED and not path.name.endswith(layout.WEIGHT_SUFFIXES):
            shutil.copy2(path, out / path.name)
    log.info("exported %s through modelopt's Hugging Face exporter to %s", name, out)
    return out


def _load_weights(hf, weights: dict) -> None:
    missing, unexpected = hf.load_state_dict(weights, strict=False)
    tied = {"lm_head.weight"} if hf.config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"Megatron -> transformers weights: missing {sorted(set(missing) - tied)}, "
                           f"unexpected {sorted(unexpected)}")


@torch.no_grad()
def _set_quantizers(hf, values: dict, enabled: dict) -> None:
    """Every quantizer of `hf` that Megatron has gets its values and switch; one the config enables that Megatron
    has not, or a value nothing takes, is an error (a layer would silently ship calibrated on the dummy sample or
    unquantized). A disabled quantizer keeps its pre_quant_scale: modelopt applies it all the same (INT4-AWQ's
    input quantizer)."""
    used = set()
    for module_name, module in hf.named_modules():
        if not hasattr(module, "weight_quantizer"):
            continue
        for name, quantizer in _quantizers(module):
            key = f"{module_name}.{name}"
            if key not in enabled:
                if quantizer.is_enabled:  # the config quantizes it (the embeddings' are off)
                    raise RuntimeError(f"{key}: no quantizer of the Megatron model maps to it")
                continue
            for buf in ("_amax", "_pre_quant_scale"):
                value = values.get(f"{key}.{buf}")
                if value is None:
                    continue
                used.add(f"{key}.{buf}")
                current = getattr(quantizer, buf, None)
                if current is not None and current.numel() != value.numel():
                    raise RuntimeError(f"{key}.{buf}: Megatron has {value.numel()} values, transformers "
                                       f"{current.numel()}")
                value = value.reshape(current.shape) if current is not None else value
                # amax in fp32, as calibrated (bf16 would move every scale by up to 0.4%); pre_quant_scale
                # multiplies the input, so it takes the model's dtype (the exporter writes it so anyway)
                dtype = torch.float32 if buf == "_amax" else module.weight.dtype
                if current is not None:  # the setters copy into the buffer, keeping its dtype: a new one
                    delattr(quantizer, buf)
                setattr(quantizer, buf.removeprefix("_"), value.to(module.weight.device, dtype))
            if not enabled[key]:
                quantizer.disable()
            elif f"{key}._amax" not in values and quantizer.amax is not None:
                raise RuntimeError(f"{key}: no calibrated range in the Megatron model (the dummy one would stay)")
            else:
                quantizer.enable()
    if set(values) - used:
        raise RuntimeError(f"Megatron quantizer values no transformers quantizer took: {sorted(set(values) - used)}")
