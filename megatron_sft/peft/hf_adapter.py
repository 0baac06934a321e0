"""LoRA adapters as Hugging Face PEFT adapter folders (adapter_config.json + adapter_model.safetensors).

Megatron fuses what Hugging Face keeps apart, so one Megatron adapter maps to several PEFT ones:

    linear_qkv  -> q_proj, k_proj, v_proj   B's rows de-interleaved per query group, as the weight's are;
                                            the shared A copied to each
    linear_fc1  -> gate_proj, up_proj       B's rows [gate; up]; A copied
    linear_proj -> o_proj, linear_fc2 -> down_proj
    experts' linear_fc1 / linear_fc2 -> mlp.experts.gate_up_proj / down_proj, through PEFT's
        target_parameters: A [E*r, in] (expert-major rows), B [out, r*E] (expert-minor columns)
    NemotronH (hybrid): the same under each layer's `mixer` (fc1 -> up_proj, not gated), in_proj / out_proj of the
        Mamba layers as they are, the shared expert's under mixer.shared_experts, experts' under mixer.experts

Written at any layout (each adapter gathered over tensor parallelism, collected on rank 0: adapters are small);
read on one process (TP=PP=EP=1: the checkpoint is resharded on load, whatever layout saved it).
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_sft.errors import UserError
from megatron_sft.peft.lora import LoraSpec, lora_modules

log = logging.getLogger(__name__)
CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


@dataclass(frozen=True)
class PeftNames:
    """Where a model's adapters sit in transformers' module tree: the layers' prefix, each Megatron layer kind's
    owner and Hugging Face names, and the 3-D expert parameters (PEFT's target_parameters)."""

    prefix: str
    dense: dict[str, tuple[str, tuple[str, ...]]]
    experts: str
    expert_param: dict[str, str]


_GPT = PeftNames(
    "base_model.model.model.layers",
    {"linear_qkv": ("self_attn", ("q_proj", "k_proj", "v_proj")), "linear_proj": ("self_attn", ("o_proj",)),
     "linear_fc1": ("mlp", ("gate_proj", "up_proj")), "linear_fc2": ("mlp", ("down_proj",))},
    "mlp.experts", {"linear_fc1": "gate_up_proj", "linear_fc2": "down_proj"})
# NemotronH: every layer's module is its "mixer"; MLPs are not gated; the MoE's shared expert is a module of its own
_HYBRID = PeftNames(
    "base_model.model.backbone.layers",
    {"linear_qkv": ("mixer", ("q_proj", "k_proj", "v_proj")), "linear_proj": ("mixer", ("o_proj",)),
     "linear_fc1": ("mixer", ("up_proj",)), "linear_fc2": ("mixer", ("down_proj",)),
     "in_proj": ("mixer", ("in_proj",)), "out_proj": ("mixer", ("out_proj",)),
     "shared_experts.linear_fc1": ("mixer.shared_experts", ("up_proj",)),
     "shared_experts.linear_fc2": ("mixer.shared_experts", ("down_proj",))},
    "mixer.experts", {"linear_fc1": "up_proj", "linear_fc2": "down_proj"})


# peft (0.21) refuses LoRA on these modules of Mamba models (model_type nemotron_h): transformers' CUDA path hands the
# weight straight to mamba_ssm's kernel, bypassing the module and any adapter on it.
PEFT_REFUSES_ON_MAMBA = ("out_proj",)


def peft_unloadable(targets, hybrid: bool) -> list[str]:
    """The targets whose adapters peft cannot load on transformers' model (their run is exported merged)."""
    return [t for t in targets if hybrid and t in PEFT_REFUSES_ON_MAMBA]


def peft_names(config) -> PeftNames:
    return _HYBRID if getattr(config, "is_hybrid_model", False) else _GPT


_NAME = re.compile(r"decoder\.layers\.(\d+)\.(?:.*\.local_experts\.(\d+)\.)?.*?(linear_\w+|in_proj|out_proj)$")


def _kind(name: str) -> str:
    """The Megatron layer kind of an adapter's module name: linear_fc1, in_proj, shared_experts.linear_fc1, ..."""
    leaf = name.rsplit(".", 1)[-1]
    return f"shared_experts.{leaf}" if ".shared_experts." in name else leaf


def _split_qkv(b: torch.Tensor, config) -> list[torch.Tensor]:
    """linear_qkv rows are [q heads of group 0, k0, v0, q heads of group 1, ...]; PEFT wants q, k, v."""
    groups, d = config.num_query_groups, config.kv_channels
    per_group = config.num_attention_heads // groups
    rows = b.reshape(groups, (per_group + 2) * d, -1)
    q, k, v = rows.split([per_group * d, d, d], dim=1)
    return [t.reshape(-1, b.shape[-1]) for t in (q, k, v)]


def _join_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config) -> torch.Tensor:
    groups, r = config.num_query_groups, q.shape[-1]
    return torch.cat([q.reshape(groups, -1, r), k.reshape(groups, -1, r), v.reshape(groups, -1, r)], dim=1) \
        .reshape(-1, r)


def _factors(chunks: list, names: PeftNames):
    """(layer, expert or None, Megatron layer kind, module) of every adapter."""
    for name, module in lora_modules(chunks):
        match = _NAME.search(name)
        kind = _kind(name)
        if match is None or (match.group(2) is None and kind not in names.dense):
            raise UserError(f"{name}: no Hugging Face PEFT name is known for this adapter")
        layer, expert, _ = match.groups()
        yield int(layer), None if expert is None else int(expert), kind, module


def _expert_key(names: PeftNames, layer: int, param: str, targeted: list[str]) -> str:
    """PEFT nests one wrapper per targeted parameter of the experts, the first listed innermost."""
    depth = len(targeted) - 1 - targeted.index(param)
    return f"{names.prefix}.{layer}.{names.experts}.{'base_layer.' * depth}"


def gathered_factors(chunks: list) -> list[tuple] | None:
    """(global layer, global expert or None, Megatron layer name, A, B) of every adapter, whole and fp32, on
    rank 0 (None elsewhere); each adapter is gathered over its tensor-parallel group and sent by one rank."""
    from megatron.core import parallel_state as ps

    from megatron_sft.checkpointing.hf_tensors import full_tensor
    from megatron_sft.models.builder import unwrap

    dense = ps.get_data_parallel_rank(with_context_parallel=True) == 0
    experts = ps.get_expert_data_parallel_rank() == 0
    writes = {False: dense and ps.get_tensor_model_parallel_rank() == 0,
              True: experts and ps.get_expert_tensor_parallel_rank() == 0}
    mine = []
    for chunk in chunks:
        for layer in unwrap(chunk).decoder.layers:
            for name, m in layer.named_modules():
                if not hasattr(m, "lora_A") or not (experts if m.is_expert else dense):
                    continue  # another replica sends this one
                a = full_tensor(m.lora_A, torch.float32, group=m.tp_group)
                b = full_tensor(m.lora_B, torch.float32, m.lora_local_blocks(), m.tp_group)
                if writes[m.is_expert]:
                    local = re.search(r"local_experts\.(\d+)\.", name)
                    expert = None if local is None else layer.mlp.local_expert_indices[int(local.group(1))]
                    mine.append((layer.layer_number - 1, expert, _kind(name), a, b))
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return mine
    everyone = [None] * torch.distributed.get_world_size() if torch.distributed.get_rank() == 0 else None
    torch.distributed.gather_object(mine, everyone, dst=0)
    return None if everyone is None else [f for part in everyone for f in part]


def peft_state(factors: list[tuple], config) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """PEFT tensors (fp32, contiguous, no shared storage), target_modules and target_parameters."""
    names = peft_names(config)
    tensors, modules, experts = {}, set(), defaultdict(dict)
    for layer, expert, kind, a, b in factors:
        if expert is not None:
            experts[(layer, names.expert_param[kind])][expert] = (a, b)
            continue
        if kind not in names.dense:
            raise UserError(f"layer {layer} {kind}: no Hugging Face PEFT name is known for this adapter")
        owner, hf_names = names.dense[kind]
        parts = _split_qkv(b, config) if kind == "linear_qkv" else b.chunk(len(hf_names))
        for hf, part in zip(hf_names, parts):
            key = f"{names.prefix}.{layer}.{owner}.{hf}"
            tensors[f"{key}.lora_A.weight"] = a.clone()
            tensors[f"{key}.lora_B.weight"] = part.contiguous().clone()
            modules.add(hf)
    targeted = [p for p in names.expert_param.values() if any(k[1] == p for k in experts)]
    for (layer, param), by_expert in experts.items():
        a_list, b_list = zip(*(by_expert[e] for e in sorted(by_expert)))
        key = _expert_key(names, layer, param, targeted)
        tensors[f"{key}lora_A.weight"] = torch.cat(a_list).contiguous()  # [E*r, in]
        tensors[f"{key}lora_B.weight"] = torch.stack(b_list, dim=-1).reshape(b_list[0].shape[0], -1).contiguous()
    return tensors, sorted(modules), [f"{names.experts}.{p}" for p in targeted]


def adapter_config(spec: LoraSpec, modules: list[str], parameters: list[str], base: str | None) -> dict:
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base, "r": spec.rank,
            "lora_alpha": spec.alpha, "lora_dropout": spec.dropout, "target_modules": modules,
            "target_parameters": parameters or None, "bias": "none", "fan_in_fan_out": False,
            "use_rslora": False, "use_dora": False, "init_lora_weights": True, "inference_mode": True,
            "modules_to_save": None}


def save_peft_adapter(chunks: list, spec: LoraSpec, out_dir: str | Path, base: str | None, dtype) -> Path:
    """Write the PEFT folder from rank 0, at any layout (every rank must call this)."""
    from safetensors.torch import save_file

    from megatron_sft.models.builder import unwrap

    factors = gathered_factors(chunks)
    out = Path(out_dir)
    if factors is None:
        return out
    tensors, modules, parameters = peft_state(factors, unwrap(chunks[0]).config)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(dtype) for k, v in tensors.items()}, str(out / WEIGHTS), metadata={"format": "pt"})
    (out / CONFIG).write_text(json.dumps(adapter_config(spec, modules, parameters, base), indent=1))
    log.info("wrote PEFT adapter %s: %d tensors, targets %s", out, len(tensors), " ".join(modules + parameters))
    return out


def _shared_a(tensors: dict, keys: list[str], where: Path) -> torch.Tensor:
    """Megatron's fused layer has one A: the PEFT A's of its parts must be the same matrix."""
    first = tensors[keys[0]]
    for key in keys[1:]:
        if not torch.equal(tensors[key], first):
            raise UserError(f"{where}: {key} differs from {keys[0]}; Megatron's fused layer shares one A, so this "
                            "adapter cannot be loaded exactly: merge it (peft's merge_and_unload) and --load that")
    return first


def _take(tensors: dict, key: str, used: set, where: Path) -> torch.Tensor:
    if key not in tensors:
        raise UserError(f"{where}: no {key}; the adapter does not cover the layers --lora-target-modules names")
    used.add(key)
    return tensors[key].float()


def load_peft_adapter(chunks: list, adapter_dir: str | Path, spec: LoraSpec) -> None:
    """Fill the attached adapters from a PEFT folder (the inverse of save_peft_adapter)."""
    from safetensors.torch import load_file

    from megatron_sft.models.builder import unwrap

    where = Path(adapter_dir) / WEIGHTS
    tensors, used = load_file(str(where)), set()
    config = unwrap(chunks[0]).config
    names = peft_names(config)
    experts = defaultdict(list)
    for layer, expert, kind, m in _factors(chunks, names):
        if expert is not None:
            experts[(layer, kind)].append((expert, m))
            continue
        owner, hf_names = names.dense[kind]
        keys = [f"{names.prefix}.{layer}.{owner}.{hf}" for hf in hf_names]
        a = _shared_a({k: _take(tensors, f"{k}.lora_A.weight", used, where) for k in keys}, keys, where)
        parts = [_take(tensors, f"{k}.lora_B.weight", used, where) for k in keys]
        m.set_lora(a, _join_qkv(*parts, config) if kind == "linear_qkv" else torch.cat(parts))
    targeted = [p for k, p in names.expert_param.items() if any(kind == k for _, kind in experts)]
    for (layer, kind), members in experts.items():
        key = _expert_key(names, layer, names.expert_param[kind], targeted)
        a_all, b_all = _take(tensors, f"{key}lora_A.weight", used, where), _take(tensors, f"{key}lora_B.weight",
                                                                                  used, where)
        n = a_all.shape[0] // spec.rank
        b_all = b_all.reshape(b_all.shape[0], spec.rank, n)
        for expert, m in members:
            m.set_lora(a_all[expert * spec.rank:(expert + 1) * spec.rank], b_all[:, :, expert])
    unused = sorted(set(tensors) - used)
    if unused:
        raise UserError(f"{where}: {len(unused)} tensors match no adapter of this model (e.g. {unused[0]}); "
                        "check --lora-target-modules and the base model")
    log.info("loaded PEFT adapter %s (%d tensors)", adapter_dir, len(used))
