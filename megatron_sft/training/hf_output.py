"""The one writer of Hugging Face directories from a Megatron model: --save-hf (`iter_N/hf/`, written by the
training run itself) and convert.sh's export (write_hf, at the checkpoint's own layout).

    iter_N/hf/          full fine-tuning: config.json, generation_config.json, tokenizer files, safetensors
                        (one file per layer and writer, model.safetensors.index.json); LoRA: the PEFT adapter
                        (adapter_config.json, adapter_model.safetensors) and the tokenizer files
      merged/           LoRA with --merge-lora: the full model with the adapters merged
      parity.json       the self-check: logits of fixed tokens, transformers vs the Megatron model
      manifest.json     sizes and checksums (integrity.py), written last

Atomic like the checkpoint: written into `iter_N/.hf.saving/`, renamed to `iter_N/hf/` once its parity holds.
A killed export leaves only the hidden staging directory (removed by the next export of that iteration); a
failed parity check leaves `iter_N/hf.rejected/` and stops the run with one line. The Megatron checkpoint is
published before the export starts, so nothing the export does can cost it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_sft.checkpointing import integrity, layout
from megatron_sft.checkpointing.hf_tensors import LayerExporter
from megatron_sft.checkpointing.names import GGUF_SOURCE, MERGED, PARITY, STAGING
from megatron_sft.errors import UserError
from megatron_sft.models.builder import unwrap
from megatron_sft.runtime.distributed import any_rank
from megatron_sft.training.hf_parity import check_parity

log = logging.getLogger(__name__)
_NOT_COPIED = ("config.json", GGUF_SOURCE)  # config.json is written for the export's dtype


@dataclass(frozen=True)
class HfOutput:
    """What the export needs besides the model: its dtype and, for LoRA, the adapters' spec and base."""

    dtype: torch.dtype
    merge_lora: bool = False
    lora: object | None = None  # peft.model.LoraModel of a LoRA run
    adapter: bool = True  # LoRA: write the PEFT adapter (with merge_lora, the merged model goes into merged/);
    # False (convert.sh MERGE_LORA=1): only the merged full model, at the top of the directory
    who: str = "--save-hf"  # for messages: which command asked for it


def _rank0() -> bool:
    return dist.get_rank() == 0


def _sync_params(chunks: list) -> None:
    """With --overlap-param-gather the updated weights reach the model at the next forward: fetch them now."""
    for chunk in chunks:
        ddp = getattr(chunk, "ddp_config", None)
        if ddp is not None and ddp.overlap_param_gather:
            chunk.start_param_sync(force_sync=True)


def _write_weights(models: list, out: Path, assets: Path, dtype: torch.dtype, merge: bool) -> int:
    """Every writer rank saves its pieces (one file per layer) under temporary names; rank 0 names them in
    Hugging Face's `model-0000i-of-0000n.safetensors` order and writes the index. Returns the bytes."""
    from safetensors.torch import save_file

    config = json.loads((assets / "config.json").read_text())
    arch, vocab = config["architectures"][0], config["vocab_size"]
    mine = []
    for model in models:
        for piece in LayerExporter(model, arch, dtype, vocab, merge).pieces():
            name = f".part-{dist.get_rank()}-{len(mine)}.safetensors"
            save_file(piece.tensors, str(out / name), metadata={"format": "pt"})
            mine.append((piece.order, name, sorted(piece.tensors),
                         sum(t.numel() * t.element_size() for t in piece.tensors.values())))
            del piece  # one layer at a time
    everyone = [None] * dist.get_world_size() if _rank0() else None
    dist.gather_object(mine, everyone, dst=0)
    if not _rank0():
        return 0
    files = sorted(f for part in everyone for f in part)
    weight_map, total = {}, sum(f[3] for f in files)
    for i, (_, tmp, names, _) in enumerate(files):
        final = "model.safetensors" if len(files) == 1 else f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"
        os.replace(out / tmp, out / final)
        weight_map.update({n: final for n in names})
    if len(files) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return total


def _write_side_files(out: Path, assets: Path, dtype: torch.dtype, full_model: bool) -> None:
    """Tokenizer files (and chat template) from the checkpoint's hf_assets; for a full model also config.json
    in the export's dtype and generation_config.json."""
    from transformers import AutoConfig, GenerationConfig

    for path in assets.iterdir():
        if not path.is_file() or path.name in _NOT_COPIED or path.name.endswith(layout.WEIGHT_SUFFIXES):
            continue  # never the source's own weights (convert's --pretrained-model-path is a whole HF model)
        if full_model or path.name != "generation_config.json":
            shutil.copy2(path, out / path.name)
    if not full_model:
        return
    config = AutoConfig.from_pretrained(assets)
    config.dtype = dtype
    config.save_pretrained(out)
    if not (out / "generation_config.json").is_file():
        GenerationConfig.from_model_config(config).save_pretrained(out)


def _side_files_on_rank0(out: Path, assets: Path, dtype: torch.dtype, full_model: bool, reports: dict) -> None:
    """Rank 0 writes them; a failure is a failed report (the other ranks are already in the next collective)."""
    if not _rank0():
        return
    try:
        _write_side_files(out, assets, dtype, full_model)
    except Exception as err:  # noqa: BLE001 - reported like a parity failure, in one line
        reports[f"files of {out.name}"] = {"ok": False, "metric": f"writing config/tokenizer failed "
                                           f"({type(err).__name__}: {' '.join(str(err).split())[:200]})",
                                           "value": float("inf"), "bound": 0.0}


def _export_into(out: Path, chunks: list, assets: Path, spec: HfOutput) -> dict:
    """The files of the directory (and of `merged/`), then their parity checks. Returns parity.json's content."""
    models = [unwrap(c) for c in chunks]
    vocab = json.loads((assets / "config.json").read_text())["vocab_size"]
    reports = {}
    if spec.lora is None or not spec.adapter:  # a full model; LoRA's adapters merged into it (W + s B A)
        _write_weights(models, out, assets, spec.dtype, merge=spec.lora is not None)
        _side_files_on_rank0(out, assets, spec.dtype, True, reports)
        reports["model" if spec.lora is None else "merged"] = check_parity(chunks, out, spec.dtype, vocab)
        return reports
    from megatron_sft.peft.hf_adapter import save_peft_adapter

    base = spec.lora.base.path if spec.lora.base.format == "hf" else None
    save_peft_adapter(models, spec.lora.spec, out, base, spec.dtype)
    _side_files_on_rank0(out, assets, spec.dtype, False, reports)
    reports["adapter"] = check_parity(chunks, out, spec.dtype, vocab, adapter_base=base, lora=True)
    if spec.merge_lora:
        merged = out / MERGED
        if _rank0():
            merged.mkdir()
        dist.barrier()
        _write_weights(models, merged, assets, spec.dtype, merge=True)
        _side_files_on_rank0(merged, assets, spec.dtype, True, reports)
        reports["merged"] = check_parity(chunks, merged, spec.dtype, vocab)
    return reports


def check_save_hf(cfg, assets: str | os.PathLike | None, quantized: bool = False) -> None:
    """--save-hf's refusals, at start-up rather than at the first save after hours of training."""
    from modelopt.torch.export.plugins.mcore_common import all_mcore_hf_export_mapping

    if quantized:  # plain HF tensors would drop the quantization the run trains through
        raise UserError("--save-hf writes unquantized Hugging Face weights; this model is quantized (QAT): drop "
                        "--save-hf and export the checkpoint with examples/export.sh (modelopt's quantized format)")
    config = Path(assets) / "config.json" if assets is not None else None
    if config is None or not config.is_file():
        raise UserError("--save-hf needs the Hugging Face config.json of the model (the checkpoint's hf_assets/ or "
                        "--load's directory); this run has none: train from a Hugging Face model")
    arch = (json.loads(config.read_text()).get("architectures") or ["?"])[0]
    if arch not in all_mcore_hf_export_mapping:
        raise UserError(f"--save-hf: {arch} ({config}) has no Hugging Face export mapping in nvidia-modelopt")
    if cfg.model.moe_grouped_gemm:
        raise UserError("--save-hf does not write grouped-GEMM experts yet: drop --moe-grouped-gemm, or export "
                        "the checkpoint later with convert.sh")


def _readable_by_all(directory: Path) -> None:
    """safetensors creates its files 0600; a server running as another user must read them (umask applies)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in directory.rglob("*"):
        if path.is_file():
            os.chmod(path, 0o666 & ~umask)


def save_hf(chunks: list, ckpt_dir: str | os.PathLike, spec: HfOutput) -> Path:
    """--save-hf: write `ckpt_dir/hf/` from the live model (collective: every rank calls it). Returns its path."""
    ckpt_dir = Path(ckpt_dir)
    view = layout.CheckpointDir(ckpt_dir)
    assets = view.hf_assets
    if not (assets / "config.json").is_file():
        raise UserError(f"--save-hf: {assets}/config.json is missing, so there is no Hugging Face config to write; "
                        "train from a Hugging Face model (or a checkpoint that has its hf_assets)")
    return write_hf(chunks, view.hf, assets, spec)


def write_hf(chunks: list, final: Path, assets: Path, spec: HfOutput) -> Path:
    """The one writer of Hugging Face directories from a Megatron model, at whatever layout it runs (--save-hf and
    convert.sh): staged in `.NAME.saving/`, parity-checked (parity.json), checksummed (manifest.json), renamed into
    place. A parity failure keeps the files as `NAME.rejected/` and raises one line on every rank."""
    staging = final.parent / f".{final.name}{STAGING}"
    t0 = time.perf_counter()
    if _rank0():
        shutil.rmtree(staging, ignore_errors=True)  # left by a killed export
        staging.mkdir(parents=True)
    dist.barrier()
    _sync_params(chunks)
    reports = _export_into(staging, chunks, assets, spec)
    failed = _rank0() and any(not r["ok"] for r in reports.values())
    if _rank0():
        (staging / PARITY).write_text(json.dumps(reports, indent=1))
    rejected = final.parent / f"{final.name}.rejected"
    if any_rank(failed):
        if _rank0():
            shutil.rmtree(rejected, ignore_errors=True)
            os.replace(staging, rejected)
        worst = "; ".join(f"{k}: {r['metric']} {r['value']:.3g} > {r['bound']:.3g}" for k, r in reports.items()
                          if not r["ok"]) if _rank0() else "see rank 0's log"
        raise UserError(f"{spec.who}: the Hugging Face export into {final} does not reproduce the model's logits "
                        f"({worst}); kept as {rejected} with {PARITY}; the Megatron checkpoint itself is intact")
    if _rank0():
        _readable_by_all(staging)
    size = integrity.write_manifest(staging)
    if _rank0():
        layout.publish(staging, final)
        shutil.rmtree(rejected, ignore_errors=True)  # an earlier failed try
    dist.barrier()
    summary = ", ".join(f"{k} {r['metric']} {r['value']:.2g}" for k, r in reports.items()) if _rank0() else ""
    log.info("saved Hugging Face %s %s (%.1f MB, %.1f s; parity: %s)",
             "adapter" if spec.lora is not None and spec.adapter else "model", final, size / 1e6,
             time.perf_counter() - t0, summary)
    return final
