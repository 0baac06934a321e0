"""The live model's weights as Hugging Face tensors, a layer at a time, at the run's own layout.

The names and splits come from nvidia-modelopt's export table (the one `convert.sh` uses), so the two
exports agree tensor for tensor. The gathering is done here: modelopt's exporter reads each rank's
tensor-parallel shard as if it were the whole weight (wrongly shaped files at TP>1) and holds the whole
model before it writes. Here each layer is gathered over its tensor-parallel group, handed to the
writer and dropped before the next one, so no rank holds more than one extra layer at a time.

Which rank writes what (every weight exactly once):
    dense weights  the tensor-parallel rank 0 of data-parallel replica 0 of each pipeline stage
    expert weights the expert-tensor-parallel rank 0 of expert-data-parallel replica 0 of each
                   (pipeline stage, expert-parallel rank): each writes its own experts
Other replicas skip the gathers altogether.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_sft.errors import UserError


@dataclass
class Piece:
    """One file's worth of Hugging Face tensors; `order` sorts the files as the model reads them."""

    order: tuple
    tensors: dict[str, torch.Tensor]


def _gather(t: torch.Tensor, group, dim: int) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, t.contiguous(), group=group)
    return torch.cat(parts, dim)


def full_tensor(param: torch.Tensor, dtype: torch.dtype, parts: tuple[int, ...] | None = None,
                group=None) -> torch.Tensor:
    """The whole tensor of which `param` is this rank's tensor-parallel shard, in `dtype`, on the CPU. Read only:
    unsharded, on the CPU and already in `dtype`, it is the parameter itself.

    `group`: the layer's own tensor-parallel group (`module.tp_group`: the expert one for expert layers), by
    default the dense one. `parts`: the rows are blocks of these local sizes on every rank ([gate; up] of SwiGLU's
    linear_fc1, [z, x, B, C, dt] of a Mamba in_proj), each block gathered apart."""
    from megatron.core import parallel_state as ps

    t = param.detach().to(dtype)
    if not getattr(param, "tensor_model_parallel", False):
        return t.cpu()
    group = group if group is not None else ps.get_tensor_model_parallel_group()
    if dist.get_world_size(group) == 1:
        return t.cpu()
    if parts:
        return torch.cat([_gather(block, group, 0) for block in torch.split(t, list(parts), 0)]).cpu()
    # Megatron's Mamba mixer marks its per-head parameters and conv1d tensor-parallel without a dimension: rows
    return _gather(t, group, getattr(param, "partition_dim", 0)).cpu()


def mamba_row_parts(mixer, world: int = 1) -> dict[str, tuple[int, ...]]:
    """A Mamba mixer's row blocks, whole (world 1) or per tensor-parallel rank: in_proj is [z, x, B, C, dt] and
    conv1d [x, B, C]; tensor parallelism splits each block apart (rank r holds part r of each)."""
    d_in, bc, heads = mixer.d_inner // world, mixer.ngroups * mixer.d_state // world, mixer.nheads // world
    return {"in_proj": (d_in, d_in, bc, bc, heads), "conv1d": (d_in, bc, bc)}


def _halves(module, gated: bool) -> tuple[int, ...] | None:
    if not gated:
        return None
    rows = module.weight.shape[0]
    return (rows // 2, rows // 2)


def module_tensors(module, dtype: torch.dtype, gated: bool = False, merge_lora: bool = False,
                   parts: tuple[int, ...] | None = None) -> dict:
    """{"weight": ..., "bias": ...} of a linear or norm, whole; with `merge_lora` a LoRA layer's adapter merged in
    (W + scaling * B A, in fp32 factors: the one place adapters are merged, for --save-hf and convert.sh).
    `gated`: SwiGLU's [gate; up] rows; `parts`: other row blocks (full_tensor)."""
    out, group = {}, getattr(module, "tp_group", None)
    parts = parts or _halves(module, gated)
    weight = getattr(module, "weight", None)
    if weight is not None and weight.numel() > 0:
        if merge_lora and hasattr(module, "lora_A"):
            # a copy: without tensor parallelism full_tensor returns the live weight itself
            w = full_tensor(weight, weight.dtype, parts, group).clone()
            a = full_tensor(module.lora_A, torch.float32, group=group)
            b = full_tensor(module.lora_B, torch.float32, parts, group)
            w.add_((b @ a * module.lora_scaling).to(w.dtype))
            out["weight"] = w.to(dtype)
        else:
            out["weight"] = full_tensor(weight, dtype, parts, group)
    bias = getattr(module, "bias", None)
    if isinstance(bias, torch.Tensor) and bias.numel() > 0:
        out["bias"] = full_tensor(bias, dtype, parts, group)
    return out


def _split_qkv(t: torch.Tensor, config) -> list[torch.Tensor]:
    """Megatron's rows are [q heads of group 0, k0, v0, q heads of group 1, ...]; HF keeps q, k, v apart."""
    groups, d = config.num_query_groups, config.kv_channels
    per_group = config.num_attention_heads // groups
    rows = t.reshape(groups, per_group + 2, d, *t.shape[1:])
    return [rows[:, :per_group].reshape(-1, *t.shape[1:]), rows[:, per_group].reshape(-1, *t.shape[1:]),
            rows[:, per_group + 1].reshape(-1, *t.shape[1:])]


def apply_rule(rule, tensors: dict, config, *ids) -> dict[str, torch.Tensor]:
    """modelopt's mapping entry applied to whole tensors: a rename, or the q/k/v or gate/up split."""
    prefix = rule.target_name_or_prefix.format(*ids)
    kind, kwargs = rule.func_name, rule.func_kwargs
    if kind == "name_remapping":
        if not prefix.endswith("."):  # a whole name (a fused norm weight, a Mamba parameter)
            return {prefix: next(iter(tensors.values()))}
        renamed = kwargs.get("mapping", {})  # e.g. a router's expert_bias -> e_score_correction_bias
        return {prefix + renamed.get(k, k): v for k, v in tensors.items()}
    if kind == "qkv_slicing":
        names = [kwargs.get(f"{p}_proj_name", f"{p}_proj") for p in "qkv"]
        out = {}
        for key, value in tensors.items():
            for name, part in zip(names, _split_qkv(value, config)):
                out[f"{prefix}{name}.{key}"] = part
        return out
    if kind == "gated_mlp_slicing":
        gate, up = kwargs.get("gate_proj_name", "gate_proj"), kwargs.get("up_proj_name", "up_proj")
        out = {}
        for key, value in tensors.items():
            g, u = value.chunk(2, dim=0)
            out[f"{prefix}{gate}.{key}"], out[f"{prefix}{up}.{key}"] = g.clone(), u.clone()
        return out
    raise UserError(f"{prefix}: modelopt's mapping {kind!r} is not supported by the Hugging Face writer")


def _is_identity(module) -> bool:
    from megatron.core.transformer.identity_op import IdentityOp

    return module is None or isinstance(module, IdentityOp)


class LayerExporter:
    """Walks one model chunk's modules and yields the Pieces this rank writes."""

    def __init__(self, model, arch: str, dtype: torch.dtype, vocab_size: int, merge_lora: bool = False):
        from megatron.core import parallel_state as ps
        from modelopt.torch.export.plugins.mcore_common import all_mcore_hf_export_mapping

        if arch not in all_mcore_hf_export_mapping:
            raise UserError(f"{arch}: modelopt has no Hugging Face export mapping for it; the Hugging Face writer "
                            "cannot write it")
        self.rules = all_mcore_hf_export_mapping[arch]
        self.model, self.config, self.dtype = model, model.config, dtype
        self.vocab_size, self.merge = vocab_size, merge_lora
        self.dense = ps.get_data_parallel_rank(with_context_parallel=True) == 0
        self.experts = ps.get_expert_data_parallel_rank() == 0
        self.dense_writer = self.dense and ps.get_tensor_model_parallel_rank() == 0
        self.expert_writer = self.experts and ps.get_expert_tensor_parallel_rank() == 0
        self.ep_rank = ps.get_expert_model_parallel_rank()

    def _map(self, key: str, module, *ids, gated: bool = False) -> dict:
        if key not in self.rules:
            raise UserError(f"{key}: no Hugging Face name for this weight in modelopt's mapping")
        return apply_rule(self.rules[key], module_tensors(module, self.dtype, gated, self.merge), self.config, *ids)

    def pieces(self) -> Iterator[Piece]:
        m = self.model
        if hasattr(m, "embedding") and self.dense:
            emb = self._map("word_embeddings", m.embedding.word_embeddings)
            if self.dense_writer:  # Megatron pads the vocabulary; the HF model has config.vocab_size rows
                yield Piece((0,), {k: v[: self.vocab_size].clone() for k, v in emb.items()})
        for layer in m.decoder.layers:
            yield from self._layer(layer, layer.layer_number - 1)
        if not self.dense:
            return
        head = {}
        if getattr(m, "post_process", False):
            final = "final_norm" if hasattr(m.decoder, "final_norm") else "final_layernorm"  # MambaStack's name
            head.update(self._map(final, getattr(m.decoder, final)))
            if not m.share_embeddings_and_output_weights:
                head.update({k: v[: self.vocab_size].clone()
                             for k, v in self._map("output_layer", m.output_layer).items()})
        if head and self.dense_writer:
            yield Piece((2,), head)

    def _layer(self, layer, i: int) -> Iterator[Piece]:
        if hasattr(layer, "mixer"):  # a Mamba layer of a hybrid model
            if self.dense:
                mamba = self._mamba(layer, i)
                if self.dense_writer:
                    yield Piece((1, i, 0, 0), mamba)
            return
        dense = self._attention(layer, i) if self.dense and not _is_identity(layer.self_attention) else {}
        if self.dense and _is_identity(layer.self_attention) and not _is_identity(layer.pre_mlp_layernorm):
            dense.update(self._map("pre_mlp_layernorm", layer.pre_mlp_layernorm, i))
        mlp = layer.mlp
        if "MoE" in type(mlp).__name__:
            if self.dense:
                dense.update(self._router(mlp.router, i))
                dense.update(self._shared_experts(mlp, i))
            if self.experts:
                experts = self._experts(mlp, i)
                if self.expert_writer:
                    yield Piece((1, i, 1, self.ep_rank), experts)
        elif self.dense and not _is_identity(mlp):
            dense.update(self._dense_mlp(layer, i))
        if dense and self.dense_writer:
            yield Piece((1, i, 0, 0), dense)

    def _mamba(self, layer, i: int) -> dict:
        """A Mamba layer: its pre-norm and mixer, in_proj and conv1d gathered block by block."""
        mixer, world = layer.mixer, self.config.tensor_model_parallel_size
        local = mamba_row_parts(mixer, world)
        out = self._map("norm", layer.norm, i)
        out.update(self._map("mixer_norm", mixer.norm, i))
        out.update(apply_rule(self.rules["in_proj"], module_tensors(mixer.in_proj, self.dtype, merge_lora=self.merge,
                                                                    parts=local["in_proj"]), self.config, i))
        out.update(apply_rule(self.rules["conv1d"], module_tensors(mixer.conv1d, self.dtype, parts=local["conv1d"]),
                              self.config, i))
        for name in ("A_log", "D", "dt_bias"):  # fp32 in Megatron; transformers holds them in the model's dtype
            out.update(apply_rule(self.rules[name], {"": full_tensor(getattr(mixer, name), self.dtype)}, self.config,
                                  i))
        out.update(self._map("out_proj", mixer.out_proj, i))
        return out

    def _router(self, router, i: int) -> dict:
        tensors = module_tensors(router, self.dtype)
        if getattr(router, "expert_bias", None) is not None:  # e_score_correction_bias: fp32 in transformers too
            tensors["expert_bias"] = router.expert_bias.detach().float().cpu()
        return apply_rule(self.rules["router"], tensors, self.config, i)

    def _shared_experts(self, mlp, i: int) -> dict:
        shared = getattr(mlp, "shared_experts", None)
        if shared is None:
            return {}
        if "shared_experts.linear_fc1" not in self.rules:
            raise UserError("shared experts are not in the Hugging Face mapping of this model")
        gated = bool(self.config.gated_linear_unit)
        out = self._map("shared_experts.linear_fc1", shared.linear_fc1, i, gated=gated)
        out.update(self._map("shared_experts.linear_fc2", shared.linear_fc2, i))
        return out

    def _attention(self, layer, i: int) -> dict:
        att, out = layer.self_attention, {}
        if not _is_identity(layer.input_layernorm):
            out.update(self._map("input_layernorm", layer.input_layernorm, i))
        else:  # Transformer Engine fuses the norm into linear_qkv
            out[self.rules["fused_input_layernorm"].target_name_or_prefix.format(i)] = full_tensor(
                att.linear_qkv.layer_norm_weight, self.dtype)
        if not _is_identity(getattr(att, "q_layernorm", None)):
            out.update(self._map("q_layernorm", att.q_layernorm, i))
            out.update(self._map("k_layernorm", att.k_layernorm, i))
        out.update(self._map("linear_qkv", att.linear_qkv, i))
        out.update(self._map("linear_proj", att.linear_proj, i))
        if not _is_identity(layer.pre_mlp_layernorm):
            out.update(self._map("pre_mlp_layernorm", layer.pre_mlp_layernorm, i))
        elif getattr(layer.mlp, "linear_fc1", None) is not None:
            out[self.rules["fused_pre_mlp_layernorm"].target_name_or_prefix.format(i)] = full_tensor(
                layer.mlp.linear_fc1.layer_norm_weight, self.dtype)
        return out

    def _dense_mlp(self, layer, i: int) -> dict:
        gated = bool(self.config.gated_linear_unit)
        out = self._map("linear_fc1", layer.mlp.linear_fc1, i, gated=gated)
        out.update(self._map("linear_fc2", layer.mlp.linear_fc2, i))
        return out

    def _experts(self, mlp, i: int) -> dict:
        local = getattr(mlp.experts, "local_experts", None)
        if local is None:
            raise UserError("grouped-GEMM experts: the Hugging Face writer does not write them yet; convert.sh exports "
                            "such a checkpoint through nvidia-modelopt's exporter (at TP=1)")
        gated, out = bool(self.config.gated_linear_unit), {}
        for j, expert in enumerate(local):
            e = mlp.local_expert_indices[j]
            out.update(self._map("local_experts.linear_fc1", expert.linear_fc1, i, e, gated=gated))
            out.update(self._map("local_experts.linear_fc2", expert.linear_fc2, i, e))
        return out
