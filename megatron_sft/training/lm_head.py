"""The training loss with logits only where the loss is: supervised tokens, a chunk at a time.

Megatron's GPTModel computes the output layer on every token and returns the per-token cross-entropy, so a
[tokens x vocab/TP] fp32 logits tensor (and the softmax the loss keeps for backward) exists for every token,
including the system and user turns and the padding whose loss is masked out. For a 150k vocabulary that is
0.6 MB per token, often more than the layers' activations.

Here the model runs up to its final norm (the output layer's forward is swapped for a pass-through while
the model runs, so no logits are made), the hidden states of the supervised positions are picked out, and
for each chunk of them the output layer's own weight and Megatron's `vocab_parallel_cross_entropy` give the
loss and, in the same pass, the chunk's gradients with respect to the hidden states and the weight: the loss
is the last node of the graph, so its gradient is known up to the one scalar Megatron scales it by (1 outside
fp16, where this head is off). The weight's gradient goes into Megatron's fp32 main_grad right away; the hidden
states' waits for backward. The chunk's logits are freed before the next chunk, and nothing is recomputed.

Tensor parallelism: the hidden states are identical on every TP rank (gathered first under sequence
parallelism), each rank holds a vocabulary shard of the weight, and the partial hidden-state gradients are
summed over TP in backward, as in ColumnParallelLinear. Under context parallelism each rank has its own
tokens; a rank (or micro-batch) with no supervised token returns a zero loss that still carries gradients.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F


@contextmanager
def hidden_states_instead_of_logits(gpt_model):
    """Inside, GPTModel's output layer returns its input: the model returns its final hidden states [b, s, h]
    (the transpose of [s, b, h]) and the weight it would have used (the shared embedding when tied)."""
    layer = gpt_model.output_layer
    seen = {}

    def pass_through(hidden_states, weight=None, runtime_gather_output=None):
        seen["weight"] = layer.weight if weight is None else weight
        return hidden_states, None

    layer.forward = pass_through
    try:
        yield seen
    finally:
        del layer.forward  # back to the class's forward


class _ChunkedVocabParallelCE(torch.autograd.Function):
    """sum_t weight_t * CE(h_t @ W^T, target_t) over the selected tokens, gradients computed in forward.

    Per chunk: the logits (this rank's vocabulary shard), Megatron's vocab_parallel_cross_entropy and its own
    backward for d(loss)/d(logits); then the two matmuls of the linear layer's backward, accumulated in place
    (the weight's into main_grad), so no [vocab x hidden] gradient is allocated per chunk or kept for backward.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, token_weights, chunk_size, need_hidden_grad, need_weight_grad,
                per_token=None):
        from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.zeros_like(hidden) if need_hidden_grad else None
        grad_weight, in_main_grad = weight_grad_target(weight, need_weight_grad)
        for start in range(0, hidden.shape[0], chunk_size):
            end = min(start + chunk_size, hidden.shape[0])
            h = hidden[start:end].to(weight.dtype)
            logits = F.linear(h, weight).requires_grad_(need_hidden_grad or need_weight_grad)
            with torch.enable_grad():
                losses = vocab_parallel_cross_entropy(logits[:, None], targets[start:end, None])[:, 0]
                loss = (losses.float() * token_weights[start:end]).sum()
                dlogits = torch.autograd.grad(loss, logits)[0] if logits.requires_grad else None
            total += loss.detach()
            if per_token is not None:  # each token's cross-entropy, for figures (per data source)
                per_token[start:end] = losses.detach().float()
            if need_hidden_grad:  # partial over the vocabulary shard; summed over TP in backward
                grad_hidden[start:end] = dlogits.to(weight.dtype) @ weight
            if need_weight_grad:
                add_weight_grad(grad_weight, dlogits, h)
            del logits, losses, loss, dlogits
        ctx.save_for_backward(grad_hidden, None if in_main_grad else grad_weight)
        ctx.weight, ctx.in_main_grad = weight, in_main_grad
        return total

    @staticmethod
    def backward(ctx, grad_output):
        return (*head_backward(ctx, grad_output), None, None, None, None, None, None)


def weight_grad_target(weight, need_weight_grad: bool):
    """(where the output weight's gradient is accumulated during forward, whether that is Megatron's main_grad).

    Under Megatron's DDP it goes straight into the fp32 main_grad, as Megatron's own linear layers do with gradient
    accumulation fusion: no [vocab x hidden] buffer lives until backward."""
    if not need_weight_grad:
        return None, False
    in_main_grad = hasattr(weight, "main_grad") and hasattr(weight, "grad_added_to_main_grad")
    return (weight.main_grad if in_main_grad else torch.zeros_like(weight, dtype=torch.float32)), in_main_grad


def add_weight_grad(grad_weight: torch.Tensor, dlogits: torch.Tensor, h: torch.Tensor) -> None:
    """grad_weight += dlogits^T h, in place: no [vocab x hidden] temporary in fp32; in another dtype the product in
    that dtype (tensor cores on GPU), summed in fp32."""
    if h.dtype == torch.float32:
        grad_weight.addmm_(dlogits.t(), h)
    else:
        grad_weight.add_(dlogits.t().to(h.dtype) @ h)


def head_backward(ctx, grad_output):
    """(hidden-state gradient, weight gradient) of a chunked head whose forward kept them (ctx: saved tensors
    grad_hidden and grad_weight, weight, in_main_grad)."""
    grad_hidden, grad_weight = ctx.saved_tensors
    if grad_hidden is not None:
        grad_hidden = grad_hidden.mul_(grad_output.to(grad_hidden.dtype))
    if ctx.in_main_grad:
        # Added in forward as if grad_output were 1, which it is: Megatron's per-token loss is not divided by
        # micro-batches, and only fp16 (where this head is off) scales the loss.
        if float(grad_output) != 1.0:
            raise RuntimeError(f"lm_head: loss gradient {float(grad_output)} != 1 was already applied as 1; "
                               "run with --lm-head-chunk-size 0")
        grad_weight = _placeholder(ctx.weight)
    elif grad_weight is not None:
        grad_weight = grad_weight.mul_(grad_output).to(ctx.weight.dtype)
    return grad_hidden, grad_weight


def _placeholder(weight):
    """What backward returns for a weight whose gradient is already in main_grad (DDP's hook skips it)."""
    if getattr(weight, "zero_out_wgrad", False):
        # The tied embedding on this stage (Megatron marks it): the lookup's gradient still reaches the weight,
        # and the DDP hook adds that one to main_grad, so nothing is returned here.
        return None
    weight.grad_added_to_main_grad = True
    return torch.empty_like(weight)  # its pages are never touched


def select_supervised(hidden_bsh: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor,
                      sequence_parallel: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hidden states [n, h], targets [n], loss-mask weights [n], positions [n] in the [s, b]-flattened sequence)
    of the supervised tokens, from the model's final hidden states ([b, s, h] as GPTModel returns them; under
    sequence parallelism the sequence is this TP rank's share)."""
    from megatron.core.tensor_parallel import copy_to_tensor_model_parallel_region, gather_from_sequence_parallel_region

    hidden = hidden_bsh.transpose(0, 1).contiguous()  # [s, b, h], the layout of the sequence-parallel split
    if sequence_parallel:  # every TP rank needs every token; backward reduce-scatters the partial gradients
        hidden = gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=True)
    else:  # identical on TP ranks; backward all-reduces the partial gradients
        hidden = copy_to_tensor_model_parallel_region(hidden)
    positions = supervised_positions(loss_mask)
    selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
    targets = at_positions(labels, positions)
    return selected, targets, at_positions(loss_mask, positions).float(), positions


def supervised_positions(loss_mask: torch.Tensor) -> torch.Tensor:
    """Where the supervised tokens of a [b, s] loss mask are in the [s, b]-flattened sequence, the order every
    per-token loss of this project comes in."""
    return loss_mask.transpose(0, 1).reshape(-1).nonzero().squeeze(1)


def at_positions(per_token_bs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The entries of a [b, s, ...] per-position tensor at `positions` of the [s, b]-flattened sequence."""
    flat = per_token_bs.transpose(0, 1).reshape(-1, *per_token_bs.shape[2:])
    return flat.index_select(0, positions.to(flat.device))


def weighted_token_loss(selected: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                        token_weights: torch.Tensor, chunk_size: int, per_token: torch.Tensor | None = None):
    """sum_t token_weights_t * CE_t over the selected tokens, with gradients (the chunked head); `per_token`, if
    given ([n] fp32), receives each CE_t (no gradient)."""
    need = torch.is_grad_enabled()
    return _ChunkedVocabParallelCE.apply(selected, weight, targets, token_weights, chunk_size,
                                         need and selected.requires_grad, need and weight.requires_grad, per_token)


@torch.no_grad()
def token_losses(selected: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """CE_t of each selected token [n] (fp32), a chunk of logits at a time, without gradients."""
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    out = torch.empty(selected.shape[0], dtype=torch.float32, device=selected.device)
    for start in range(0, selected.shape[0], chunk_size):
        end = min(start + chunk_size, selected.shape[0])
        logits = F.linear(selected[start:end].to(weight.dtype), weight)
        out[start:end] = vocab_parallel_cross_entropy(logits[:, None], targets[start:end, None])[:, 0].float()
    return out
