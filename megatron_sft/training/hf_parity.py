"""The self-check of an exported Hugging Face directory: the logits of fixed tokens, computed by transformers from
the files just written (rank 0, on the CPU, in fp32) and by the Megatron model that wrote them (at its own layout).

The metric is the relative RMS error, ||hf - megatron|| / ||megatron||. The bound is 1e-4 when the model and the
export are both fp32 (the two implementations agree to ~1e-6 there); otherwise 5e-2, which the rounding of the
weights to bf16 stays well inside (tiny Qwen3, bf16 export of an fp32 run: 7e-4), while a wrong mapping (a q/k
swap, a missing norm, gate and up exchanged) gives errors of order 1.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_sft.models.builder import unwrap

log = logging.getLogger(__name__)
TOKENS = 16


def fixed_tokens(vocab: int, multiple: int = 1) -> torch.Tensor:
    """[1, 16] token ids spread over the vocabulary (the same for every export of a model); longer if need be to
    be a `multiple` (context parallelism cuts a sample into 2 x CP chunks)."""
    n = -(-TOKENS // multiple) * multiple
    return torch.tensor([[(7 + 7919 * i) % vocab for i in range(n)]])


def _megatron_logits(chunks: list, tokens: torch.Tensor) -> torch.Tensor | None:
    """The model's logits [1, S, padded vocab] on rank 0 (collective), in eval mode, training mode restored."""
    from megatron.core import parallel_state as ps

    from megatron_sft.inference.logits import forward_logits

    models = [unwrap(c) for c in chunks]
    was_training = [m.training for m in models]
    device = next(models[0].parameters()).device
    cp = ps.get_context_parallel_world_size()
    inputs = {"tokens": tokens} if cp == 1 else _context_parallel_share(tokens, cp, ps.get_context_parallel_rank())
    for m in models:
        m.eval()
    try:
        logits = forward_logits(models, **{k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()})
    finally:
        for m, mode in zip(models, was_training):
            m.train(mode)
    if logits is not None and cp > 1:
        logits = _gather_context_parallel(logits, tokens.shape[1], cp)
    sender = logits is not None and ps.get_tensor_model_parallel_rank() == 0 and \
        ps.get_data_parallel_rank(with_context_parallel=True) == 0
    mine = logits.cpu() if sender else None
    everyone = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(mine, everyone, dst=0)
    return None if everyone is None else next(t for t in everyone if t is not None)


def _context_parallel_share(tokens: torch.Tensor, cp: int, rank: int) -> dict:
    """This rank's tokens of one THD sample, as training cuts them (chunks r and 2*CP-1-r)."""
    from megatron_sft.data.batch import context_parallel_indices
    from megatron_sft.training.inputs import thd_params

    n = tokens.shape[1]
    bounds = torch.tensor([0, n])
    index = context_parallel_indices(bounds, cp, rank)
    return {"tokens": tokens[:, index], "position_ids": index[None], "packed_seq_params": thd_params(bounds, bounds, n),
            "seq_length": n}


def _gather_context_parallel(logits: torch.Tensor, n: int, cp: int) -> torch.Tensor:
    from megatron.core import parallel_state as ps

    from megatron_sft.data.batch import context_parallel_indices

    parts = [torch.empty_like(logits) for _ in range(cp)]
    dist.all_gather(parts, logits.contiguous(), group=ps.get_context_parallel_group())
    full = logits.new_empty((logits.shape[0], n, logits.shape[-1]))
    for rank, part in enumerate(parts):
        full[:, context_parallel_indices(torch.tensor([0, n]), cp, rank)] = part
    return full


def _hf_logits(path: Path, tokens: torch.Tensor, adapter_base: str | None) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    if adapter_base is None:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    else:
        from peft import PeftModel

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(adapter_base, dtype=torch.float32),
                                          path)
    model.eval()
    as_its_kernels(model)
    with torch.no_grad():  # no cache: transformers 5.14.1's fails on NemotronH's MLP layers (KeyError 'mlp')
        return model(tokens, use_cache=False).logits.float()


def as_its_kernels(model) -> None:
    """NemotronH's PyTorch path (the CPU's) clamps dt at time_step_min, where its CUDA kernels, like Megatron's,
    apply only time_step_limit (0, inf): the CPU reference is set to compute what the kernels do."""
    for module in model.modules():
        if type(module).__name__ == "NemotronHMamba2Mixer":
            module.time_step_min = 0.0


def check_parity(chunks: list, path: Path, dtype: torch.dtype, vocab: int, adapter_base: str | None = None,
                 lora: bool = False) -> dict | None:
    """Compare (collective; `vocab`: the Hugging Face config's); the report (parity.json's entry) on rank 0,
    None on the other ranks. A directory transformers cannot load is a failed report, not a traceback on rank 0
    alone. `lora` with no `adapter_base`: the base is not a Hugging Face directory, so the adapter cannot be
    loaded alone."""
    from megatron.core import parallel_state as ps

    config = unwrap(chunks[0]).config
    cp, tp = ps.get_context_parallel_world_size(), ps.get_tensor_model_parallel_world_size()
    # each CP rank gets 2 chunks of the sample; under sequence parallelism each share splits over TP
    tokens = fixed_tokens(vocab, (2 * cp if cp > 1 else 1) * (tp if config.sequence_parallel else 1))
    reference = _megatron_logits(chunks, tokens)
    if dist.get_rank() != 0:
        return None
    if lora and adapter_base is None:
        log.warning("--save-hf: the LoRA base is not a Hugging Face directory, so %s was not checked by loading "
                    "it in transformers", path)
        return {"ok": True, "metric": "not checked (the base is not a Hugging Face directory)", "value": 0.0,
                "bound": 0.0}
    fp32 = dtype == torch.float32 and config.params_dtype == torch.float32
    bound = 1e-4 if fp32 else 5e-2
    try:
        hf = _hf_logits(path, tokens, adapter_base)
        reference = reference[..., : hf.shape[-1]]  # Megatron's vocabulary may be padded
        diff = hf - reference
    except Exception as err:  # noqa: BLE001 - whatever transformers raises, the export is what failed
        reason = " ".join(str(err).split())[:300]
        return {"ok": False, "metric": f"loading it failed ({type(err).__name__}: {reason})",
                "value": float("inf"), "bound": bound}
    value = (diff.norm() / reference.norm().clamp_min(1e-12)).item()
    return {"ok": value <= bound, "metric": "relative RMS error", "value": value, "bound": bound,
            "max_abs_diff": diff.abs().max().item(), "tokens": tokens[0].tolist(),
            "top1_agreement": (hf.argmax(-1) == reference.argmax(-1)).float().mean().item(),
            "loaded_with": "transformers" + (" + peft" if adapter_base else "")}
