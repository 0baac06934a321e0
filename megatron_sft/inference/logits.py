"""Full-vocabulary logits from Megatron model chunks at any TP/PP layout."""

from __future__ import annotations

import torch


def forward_logits(chunks: list, tokens: torch.Tensor, position_ids: torch.Tensor | None = None,
                   attention_mask: torch.Tensor | None = None, *, select: torch.Tensor | None = None,
                   inference_context=None, packed_seq_params=None, seq_length: int | None = None) -> torch.Tensor | None:
    """Logits [B, S, V] gathered over tensor parallelism, returned on the last pipeline stage.

    Runs Megatron's own (pipelined) forward schedule, so it works at any PP, with
    `attention_mask` None for plain causal attention or a boolean [B,1,S,S] (True = masked).
    Other pipeline stages return None.

    `select` (int64 [B]): keep only that position of each row, giving [B, 1, V]; the slice is taken
    before the TP gather, so a long prompt never materialises [B, S, V] full-vocabulary logits.
    `inference_context` (a Megatron StaticInferenceContext): attention reads and extends its KV
    cache, and the model itself returns the gathered logits of the last position only, [B, 1, V].
    `packed_seq_params` (THD, B = 1): samples packed in one stream, kept apart by their cu_seqlens
    (attention backend auto), as training runs them. `seq_length`: the whole sequence when `tokens` is this
    context-parallel rank's share (the pipeline schedule divides it by CP itself).
    """
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    batch_size, seq_len = tokens.shape
    if position_ids is None:
        position_ids = torch.arange(seq_len).unsqueeze(0).expand(batch_size, -1)
    batch = {"tokens": tokens, "position_ids": position_ids, "attention_mask": attention_mask}
    # With a context Megatron insists on gathering TP itself (runtime_gather_output) and keeps only
    # the last position; without one the output is this rank's vocabulary shard of every position.
    extra = {"inference_context": inference_context, "runtime_gather_output": True} if inference_context else {}
    if packed_seq_params is not None:
        extra["packed_seq_params"] = packed_seq_params

    def forward_step(data_iterator, model):
        b = next(data_iterator)
        output = model(b["tokens"], b["position_ids"], b["attention_mask"], **extra)

        def collect(output_tensor, non_loss_data=False):
            if inference_context is not None:
                return output_tensor
            if select is not None:
                output_tensor = output_tensor[torch.arange(batch_size), select].unsqueeze(1)
            return gather_from_tensor_model_parallel_region(output_tensor)

        return output, collect

    config = chunks[0].config
    config.variable_seq_lengths = False
    # Megatron's interleaved schedule (virtual pipeline stages) runs at least PP micro-batches: run
    # copies of the batch and keep the first output. Not with a KV cache, which each copy would extend.
    copies = parallel_state.get_pipeline_model_parallel_world_size() if len(chunks) > 1 else 1
    if copies > 1 and inference_context is not None:
        from megatron_sft.errors import UserError

        raise UserError("KV-cached generation does not run with virtual pipeline stages; load without "
                         "--num-layers-per-virtual-pipeline-stage")
    iterators = [iter([batch] * copies) for _ in chunks] if len(chunks) > 1 else iter([batch])
    with torch.no_grad():
        outputs = get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iterators,
            model=chunks,
            num_microbatches=copies,
            seq_length=seq_length or seq_len,
            micro_batch_size=batch_size,
            forward_only=True,
            collect_non_loss_data=True,
        )
    if not parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        return None
    return outputs[0].float()
