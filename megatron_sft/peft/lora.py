"""LoRA adapters on Megatron-Core's tensor-parallel linear layers.

Each targeted ColumnParallelLinear / RowParallelLinear becomes a LoRA subclass of itself (its class is
swapped in place), so the base weight keeps its name, its sharding and its checkpoint key, and the
Hugging Face importer and exporter see the model they know. The adapter is sharded like its base:

    column-parallel (linear_qkv, linear_fc1): A [r, in] replicated, B [out/tp, r] split like the weight
    row-parallel (linear_proj, linear_fc2):   A [r, in/tp] split like the weight, B [out, r] replicated

The low-rank path does its own tensor-parallel communication, chosen so that every replicated adapter
gets the full gradient on every rank (no reliance on finalize_model_grads' sequence-parallel pass):
see `_column_delta` and `_row_delta`. Expert layers (is_expert) follow the MoE dispatcher's contract
(no communication inside the layer) and mark their adapters for the expert-data-parallel reduction.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import layers as tp_layers
from megatron.core.tensor_parallel import mappings
from megatron.core.transformer.mlp import apply_swiglu_sharded_factory
from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint
from megatron.core.utils import get_pg_rank, get_pg_size

from megatron_sft.errors import UserError

from megatron_sft.config import RunConfig

COLUMN_TARGETS = ("linear_qkv", "linear_fc1")
ROW_TARGETS = ("linear_proj", "linear_fc2")


@dataclass(frozen=True)
class LoraSpec:
    """The adapters of a run, from its RunConfig (whose fields hold the defaults)."""

    rank: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]
    seed: int

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def from_config(cls, cfg: RunConfig) -> LoraSpec:
        return cls(rank=cfg.lora.lora_rank, alpha=float(cfg.lora.lora_alpha), dropout=float(cfg.lora.lora_dropout),
                   targets=tuple(cfg.lora.lora_target_modules), seed=cfg.training.seed)


class _LoraMixin:
    """What both layer kinds share: parameters, dropout, scaling and the checkpoint entries."""

    lora_sharded_axis: dict[str, int]  # which adapter is split over tensor parallelism, along which axis

    def _init_lora(self, spec: LoraSpec, key: str, blocks: tuple[tuple[str, int], ...] | None) -> None:
        a_shape, b_shape = self._lora_shapes(spec.rank)
        # B's rows as blocks (name, whole size) that tensor parallelism splits apart, as the weight's: [gate; up] of
        # a SwiGLU linear_fc1, [z, x, B, C, dt] of a Mamba in_proj; None: one block
        self.lora_blocks = blocks
        self.lora_gated = blocks is not None and [n for n, _ in blocks] == ["gate", "up"]
        a, b = self.local_shards(_initial_a(a_shape, key, spec.seed), torch.zeros(b_shape))
        self.lora_A = torch.nn.Parameter(a)
        self.lora_B = torch.nn.Parameter(b)
        sharded = self.lora_sharded_axis
        for name, param in (("lora_A", self.lora_A), ("lora_B", self.lora_B)):
            tp_layers.set_tensor_model_parallel_attributes(param, name in sharded, sharded.get(name, 0), 1)
            if self.is_expert:
                param.allreduce = False  # reduced over the expert-data-parallel group, like the expert weights
        self.lora_scaling = spec.scaling
        self.lora_dropout = spec.dropout
        self.lora_key = key

    def local_shards(self, a_full: torch.Tensor, b_full: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's slices of whole A [r, in] and B [out, r] (fc1's B rows: all gate rows, then all up)."""
        tp, rank = get_pg_size(self.tp_group), get_pg_rank(self.tp_group)
        if "lora_A" in self.lora_sharded_axis:
            a_full = a_full.chunk(tp, dim=1)[rank]
        if "lora_B" in self.lora_sharded_axis:
            parts = torch.split(b_full, [n for _, n in self.lora_blocks]) if self.lora_blocks else (b_full,)
            b_full = torch.cat([p.chunk(tp, dim=0)[rank] for p in parts])
        like = dict(device=self.weight.device, dtype=self.weight.dtype)
        return a_full.contiguous().to(**like), b_full.contiguous().to(**like)

    @torch.no_grad()
    def set_lora(self, a_full: torch.Tensor, b_full: torch.Tensor) -> None:
        """Put whole (unsharded) factors in, e.g. from a PEFT adapter; shapes are checked."""
        want = self._lora_shapes(self.lora_A.shape[0])
        if (tuple(a_full.shape), tuple(b_full.shape)) != want:
            raise UserError(f"{self.lora_key}: the adapter's A {tuple(a_full.shape)} and B {tuple(b_full.shape)} do "
                            f"not fit this model's {want[0]} and {want[1]}; rank or model differ")
        for param, value in zip((self.lora_A, self.lora_B), self.local_shards(a_full, b_full)):
            param.copy_(value)

    def _lora_shapes(self, r: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Whole (unsharded) shapes of A and B."""
        return (r, self.input_size), (self.output_size, r)

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.lora_dropout, self.training) if self.lora_dropout else x

    def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
        state = super().sharded_state_dict(prefix, sharded_offsets, metadata)  # adapters in it as replicated
        adapters = {"lora_A": self.lora_A, "lora_B": self.lora_B}
        state.update(make_sharded_tensors_for_checkpoint(
            adapters, prefix, self.lora_sharded_axis, sharded_offsets, tp_group=self.tp_group,
            dp_cp_group=metadata["dp_cp_group"]))
        if self.lora_gated:  # the same [gate; up] split as the weight, so TP=2 reloads at TP=1 unscrambled
            state[f"{prefix}lora_B"] = apply_swiglu_sharded_factory(state[f"{prefix}lora_B"], sharded_offsets)
        elif self.lora_blocks:  # a Mamba in_proj's [z, x, B, C, dt], split as MambaMixer splits its weight
            from megatron.core.ssm.mamba_mixer import _split_tensor_factory

            tp = get_pg_size(self.tp_group)
            state[f"{prefix}lora_B"] = _split_tensor_factory(
                state[f"{prefix}lora_B"], [n // tp for _, n in self.lora_blocks], [b for b, _ in self.lora_blocks], 0)
        return state

    def lora_local_blocks(self) -> tuple[int, ...] | None:
        """B's row blocks on this rank (each gathered apart to make the whole B)."""
        if not self.lora_blocks:
            return None
        return tuple(n // get_pg_size(self.tp_group) for _, n in self.lora_blocks)


class LoraColumnParallelLinear(_LoraMixin, tp_layers.ColumnParallelLinear):
    lora_sharded_axis = {"lora_B": 0}

    def forward(self, input_, weight=None, runtime_gather_output=None):
        if self.gather_output or runtime_gather_output:
            raise NotImplementedError("LoRA on a column-parallel layer that gathers its output")
        output, bias = super().forward(input_, weight, runtime_gather_output)
        return output + self._column_delta(self._dropout(input_)).to(output.dtype), bias

    def _column_delta(self, x: torch.Tensor) -> torch.Tensor:
        group = self.tp_group
        if self.explicit_expert_comm:
            # The dispatcher gave every expert-TP rank the same tokens and sums their input grads:
            # only A's gradient (a partial per B shard) needs the sum, which copy's backward does.
            z = F.linear(x, mappings.copy_to_tensor_model_parallel_region(self.lora_A, group))
        elif self.sequence_parallel:
            # Gather the r-wide activation, not the input: reduce-scatter in backward sums dz over TP;
            # A saw only this rank's tokens, so its gradient is summed over TP by copy's backward.
            a = mappings.copy_to_tensor_model_parallel_region(self.lora_A, group)
            z = mappings.gather_from_sequence_parallel_region(F.linear(x, a), group=group)
        else:
            # Same input on every TP rank: summing dz over TP gives A and x their full gradients.
            z = mappings.copy_to_tensor_model_parallel_region(F.linear(x, self.lora_A), group)
        return F.linear(z, self.lora_B) * self.lora_scaling


class LoraRowParallelLinear(_LoraMixin, tp_layers.RowParallelLinear):
    lora_sharded_axis = {"lora_A": 1}

    def forward(self, input_):
        output, bias = super().forward(input_)
        return output + self._row_delta(self._dropout(input_)).to(output.dtype), bias

    def _row_delta(self, x: torch.Tensor) -> torch.Tensor:
        group = self.tp_group
        partial = F.linear(x, self.lora_A)  # this rank's input columns: a partial sum of A x
        if self.explicit_expert_comm:
            # The output stays partial (the dispatcher reduces it), and B's gradient is a partial per shard.
            return F.linear(partial, mappings.copy_to_tensor_model_parallel_region(self.lora_B, group)) \
                * self.lora_scaling
        if self.sequence_parallel:
            # Reduce-scatter the r-wide activation; B sees this rank's tokens only, so sum its gradient.
            z = mappings.reduce_scatter_to_sequence_parallel_region(partial, group=group)
            return F.linear(z, mappings.copy_to_tensor_model_parallel_region(self.lora_B, group)) \
                * self.lora_scaling
        z = mappings.reduce_from_tensor_model_parallel_region(partial, group)
        return F.linear(z, self.lora_B) * self.lora_scaling


_LORA_CLASS = {tp_layers.ColumnParallelLinear: LoraColumnParallelLinear,
               tp_layers.RowParallelLinear: LoraRowParallelLinear}


def _initial_a(shape: tuple[int, int], key: str, seed: int) -> torch.Tensor:
    """A as PEFT initialises it (kaiming-uniform, a=sqrt(5): U(-1/sqrt(in), 1/sqrt(in))), drawn for the
    whole matrix from a generator seeded by the layer's global name: the same at every TP/PP/EP layout."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
    bound = 1.0 / math.sqrt(shape[1])
    return (torch.rand(shape, generator=gen, dtype=torch.float32) * 2 - 1) * bound


def _targets_of_layer(layer, targets: tuple[str, ...]):
    """(global name, module, B's row blocks) of each targeted linear in one TransformerLayer or MambaLayer."""
    number = layer.layer_number - 1  # global, 0-based
    gated = layer.config.gated_linear_unit
    for name, module in layer.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf not in targets:
            continue
        key = f"layers.{number}.{name}"
        if ".local_experts." in name:  # local expert index -> global, so the init is the same at any EP
            head, _, tail = name.partition(".local_experts.")  # head: "mlp.experts"
            local, _, rest = tail.partition(".")
            moe = layer.get_submodule(head.rsplit(".", 1)[0])
            key = f"layers.{number}.{head}.{moe.local_expert_indices[int(local)]}.{rest}"
        yield key, module, _row_blocks(layer, leaf, module, gated)


def _row_blocks(layer, leaf: str, module, gated: bool) -> tuple[tuple[str, int], ...] | None:
    if gated and leaf == "linear_fc1":
        return (("gate", module.output_size // 2), ("up", module.output_size // 2))
    if leaf == "in_proj" and hasattr(layer, "mixer"):
        from megatron_sft.checkpointing.hf_tensors import mamba_row_parts

        return tuple(zip(("z", "x", "B", "C", "dt"), mamba_row_parts(layer.mixer)["in_proj"]))
    return None


def attach_lora(chunks: list, spec: LoraSpec) -> int:
    """Freeze every weight of `chunks` and add adapters to the targeted linears; returns how many."""
    for chunk in chunks:
        for param in chunk.parameters():
            param.requires_grad_(False)
    count = 0
    for chunk in chunks:
        for layer in chunk.decoder.layers:
            for key, module, blocks in _targets_of_layer(layer, spec.targets):
                lora_class = _LORA_CLASS.get(type(module))
                if lora_class is None:
                    raise UserError(f"--lora-target-modules: {key} is a {type(module).__name__}; LoRA supports the "
                                    "local layer spec's ColumnParallelLinear and RowParallelLinear")
                module.__class__ = lora_class
                module._init_lora(spec, key, blocks)
                count += 1
        if chunk.config.recompute_granularity == "full":
            _inputs_require_grad(chunk)
    if count == 0:
        raise UserError(f"--lora-target-modules {' '.join(spec.targets)}: no layer of this model matches")
    return count


def _inputs_require_grad(chunk) -> None:
    """Full recompute checkpoints each layer reentrantly: when the layer's input does not require grad
    (the frozen embedding's output), its output does not either and no adapter gets a gradient. Later
    pipeline stages receive inputs that require grad already."""
    embedding = getattr(chunk, "embedding", None)
    if embedding is not None:
        embedding.register_forward_hook(lambda _m, _i, out: out if out.requires_grad else out.requires_grad_(True))


def lora_modules(chunks: list):
    """(module name, module) of every LoRA layer in `chunks`."""
    for i, chunk in enumerate(chunks):
        for name, module in chunk.named_modules():
            if isinstance(module, _LoraMixin):
                yield (name if len(chunks) == 1 else f"{i}.{name}"), module


def is_lora_key(key: str) -> bool:
    return key.endswith(".lora_A") or key.endswith(".lora_B")
