"""Build Megatron-Core model chunks (GPTModel, or MambaModel for a hybrid pattern) from resolved arguments."""

from __future__ import annotations

import logging
import math

from megatron_sft.config import RunConfig
from megatron_sft.errors import UserError
from megatron_sft.models.specs import decoder_block_spec

log = logging.getLogger(__name__)


def padded_vocab_size(cfg: RunConfig, tokenizer_vocab: int | None = None) -> int:
    """The checkpoint's vocab_size when weights come from HF; otherwise Megatron's rounding."""
    if cfg.model.padded_vocab_size:
        return int(cfg.model.padded_vocab_size)
    if tokenizer_vocab is None:
        raise UserError(
            "cannot size the vocabulary: no checkpoint vocab_size and no tokenizer; pass --tokenizer-model"
        )
    multiple = cfg.model.make_vocab_size_divisible_by * cfg.parallel.tensor_model_parallel_size
    return int(math.ceil(tokenizer_vocab / multiple) * multiple)


def build_gpt_model(cfg: RunConfig, config, vocab_size: int, vp_stage: int | None = None):
    """One GPTModel chunk for this rank's pipeline stage (and virtual stage)."""
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel

    pre = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
    post = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
    return GPTModel(
        config=config,
        transformer_layer_spec=decoder_block_spec(
            config, cfg.runtime.transformer_impl, vp_stage, cfg.runtime.attention_backend
        ),
        vocab_size=vocab_size,
        max_sequence_length=cfg.model.max_position_embeddings,
        pre_process=pre,
        post_process=post,
        parallel_output=True,
        share_embeddings_and_output_weights=not cfg.model.untie_embeddings_and_output_weights,
        position_embedding_type=cfg.model.position_embedding_type,
        rotary_percent=cfg.model.rotary_percent,
        rotary_base=int(cfg.model.rotary_base),
        rope_scaling=bool(cfg.model.use_rope_scaling),
        rope_scaling_factor=float(cfg.model.rope_scaling_factor or 8.0),
        vp_stage=vp_stage,
    )


def build_hybrid(cfg: RunConfig, config, vocab_size: int):
    """A MambaModel (models/hybrid.py) for this rank's pipeline stage; it has no virtual stages."""
    from megatron.core import parallel_state

    from megatron_sft.models.hybrid import build_hybrid_model

    m = cfg.model
    return build_hybrid_model(
        config, vocab_size, m.hybrid_override_pattern, m.max_position_embeddings,
        share_embeddings=not m.untie_embeddings_and_output_weights, attention_backend=cfg.runtime.attention_backend,
        chunk_size=m.mamba_chunk_size, conv_kernel=m.mamba_conv_kernel,
        pre_process=parallel_state.is_pipeline_first_stage(), post_process=parallel_state.is_pipeline_last_stage())


def build_model_chunks(cfg: RunConfig, config, vocab_size: int) -> list:
    """All model chunks of this rank: one, or one per virtual pipeline stage."""
    from megatron.core.enums import ModelType

    vp = cfg.parallel.virtual_pipeline_model_parallel_size
    stages = range(vp) if vp and vp > 1 else [None]
    if cfg.model.hybrid_override_pattern:
        chunks = [build_hybrid(cfg, config, vocab_size)]
    else:
        chunks = [build_gpt_model(cfg, config, vocab_size, vp_stage=s) for s in stages]
    for chunk in chunks:
        chunk.model_type = ModelType.encoder_or_decoder  # read by Megatron's pipeline schedules
        if not config.perform_initialization:
            _mark_tensor_parallel(chunk)
    return chunks


def _mark_tensor_parallel(model) -> None:
    """Megatron-Core's CPU-initialisation path sets a parameter's tensor-parallel attributes (which dimension is
    split) only while initialising it; a model built to be loaded (perform_initialization off) lacks them, and
    whatever reads them (the Hugging Face writer's gathers) would take a shard for the whole tensor. Set them as
    the initialiser would: column-parallel and embedding rows (dim 0), row-parallel columns (dim 1)."""
    import torch
    from megatron.core.tensor_parallel import layers as tp

    split = ((tp.ColumnParallelLinear, 0, ("weight", "bias")), (tp.VocabParallelEmbedding, 0, ("weight",)),
             (tp.RowParallelLinear, 1, ("weight",)))
    for module in model.modules():
        for cls, dim, names in split:
            if isinstance(module, cls):
                for name in names:
                    param = getattr(module, name, None)
                    if isinstance(param, torch.nn.Parameter) and not hasattr(param, "tensor_model_parallel"):
                        tp.set_tensor_model_parallel_attributes(param, True, dim, 1)


def unwrap(chunk):
    """The GPTModel inside a DDP / Float16Module wrapper."""
    while hasattr(chunk, "module"):
        chunk = chunk.module
    return chunk
