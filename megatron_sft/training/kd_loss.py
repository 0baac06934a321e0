"""The distillation loss on the supervised tokens: KL(teacher || student) of the logits at temperature T, and the
LM cross-entropy, a chunk of tokens at a time (the chunked LM head's contract, training/lm_head.py).

Per token t, with p = softmax(z / T) over the whole (padded) vocabulary:
    KD_t = sum_v p_teacher(v) * (log p_teacher(v) - log p_student(v))      (modelopt's LogitsKLLoss: no T^2 factor)
    CE_t = -log softmax(z_student)[target_t]
The caller weights each token's KD and CE (w_kd, w_ce) and Megatron divides the sum by the global batch's supervised
tokens. Under tensor parallelism each rank holds a vocabulary shard of both output layers: maxima and normalisers are
all-reduced over TP, and so are the per-token partial sums of KL and CE.

The gradient with respect to the student's logits is known in closed form,
    w_ce * (softmax(z) - onehot(target)) + w_kd * (p_student - p_teacher) / T,
so, as in the chunked CE, each chunk's hidden-state gradient is kept for backward, the weight's goes into main_grad
at once, and the chunk's [tokens x vocab/TP] logits of both models are freed before the next chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from megatron_sft.training.lm_head import add_weight_grad, head_backward, weight_grad_target


def _tp():
    """(group, world size, rank) of tensor parallelism; (None, 1, 0) outside Megatron's process groups."""
    from megatron.core import parallel_state as ps

    if not ps.model_parallel_is_initialized():
        return None, 1, 0
    return (ps.get_tensor_model_parallel_group(), ps.get_tensor_model_parallel_world_size(),
            ps.get_tensor_model_parallel_rank())


def _log_softmax(z: torch.Tensor, group, world: int) -> torch.Tensor:
    """log softmax over the vocabulary, `z` [n, V/TP] this rank's shard (fp32)."""
    m = z.max(dim=-1, keepdim=True).values
    if world > 1:
        torch.distributed.all_reduce(m, op=torch.distributed.ReduceOp.MAX, group=group)
    z = z - m
    s = z.exp().sum(dim=-1, keepdim=True)
    if world > 1:
        torch.distributed.all_reduce(s, group=group)
    return z - s.log()


def _chunk_terms(z_s, z_t, targets, temperature, group, world, rank):
    """Per-token (KL, CE) [n] of one chunk (whole vocabulary) and the pieces of the logits' gradient."""
    vocab_shard = z_s.shape[-1]
    ls_t = _log_softmax(z_s / temperature, group, world)
    lt_t = _log_softmax(z_t / temperature, group, world)
    pt = lt_t.exp()
    partial = torch.stack([(pt * (lt_t - ls_t)).sum(-1), torch.zeros_like(pt[:, 0])])
    ls_1 = ls_t if temperature == 1.0 else _log_softmax(z_s, group, world)
    local = targets - rank * vocab_shard
    owned = (local >= 0) & (local < vocab_shard)  # the target's logit lives on this rank's shard
    idx = local.clamp(0, vocab_shard - 1)
    partial[1] = torch.where(owned, -ls_1.gather(1, idx[:, None])[:, 0], torch.zeros_like(partial[1]))
    if world > 1:
        torch.distributed.all_reduce(partial, group=group)
    return partial[0], partial[1], ls_t.exp(), pt, ls_1.exp(), owned, idx


class _ChunkedVocabParallelKD(torch.autograd.Function):
    """sum_t (w_kd_t KD_t + w_ce_t CE_t) over the selected tokens, gradients computed in forward. Also returns the
    unweighted sums of KD_t and CE_t (no gradient) for the metrics; `per_token` [n, 2], if given, receives each
    token's (KD_t, CE_t) (per-source figures)."""

    @staticmethod
    def forward(ctx, hidden, weight, t_hidden, t_weight, targets, w_kd, w_ce, temperature, chunk_size,
                need_hidden_grad, need_weight_grad, per_token):
        group, world, rank = _tp()
        sums = torch.zeros(3, dtype=torch.float64, device=hidden.device)  # weighted total, KD, CE
        grad_hidden = torch.zeros_like(hidden) if need_hidden_grad else None
        grad_weight, in_main_grad = weight_grad_target(weight, need_weight_grad)
        for start in range(0, hidden.shape[0], chunk_size):
            end = min(start + chunk_size, hidden.shape[0])
            h = hidden[start:end].to(weight.dtype)
            z_s = F.linear(h, weight).float()
            z_t = F.linear(t_hidden[start:end].to(t_weight.dtype), t_weight).float()
            kd, ce, ps_t, pt, ps_1, owned, idx = _chunk_terms(z_s, z_t, targets[start:end], temperature, group,
                                                              world, rank)
            del z_s, z_t
            if per_token is not None:
                per_token[start:end, 0], per_token[start:end, 1] = kd, ce
            a, b = w_kd[start:end, None], w_ce[start:end, None]
            sums += torch.stack([(a[:, 0] * kd + b[:, 0] * ce).sum(), kd.sum(), ce.sum()]).double()
            if need_hidden_grad or need_weight_grad:
                dz = ps_t.sub_(pt).mul_(a / temperature).add_(ps_1.mul(b))
                dz[owned, idx[owned]] -= b[owned, 0]  # the one-hot of the targets on this shard
                if need_hidden_grad:  # partial over the vocabulary shard; summed over TP in backward
                    grad_hidden[start:end] = dz.to(weight.dtype) @ weight
                if need_weight_grad:
                    add_weight_grad(grad_weight, dz, h)
                del dz
            del ps_t, pt, ps_1
        ctx.save_for_backward(grad_hidden, None if in_main_grad else grad_weight)
        ctx.weight, ctx.in_main_grad = weight, in_main_grad
        total, kd_sum, ce_sum = sums.float().unbind()
        ctx.mark_non_differentiable(kd_sum, ce_sum)
        return total, kd_sum, ce_sum

    @staticmethod
    def backward(ctx, grad_output, _kd, _ce):
        return (*head_backward(ctx, grad_output), *([None] * 10))


def chunked_kd_loss(hidden, weight, t_hidden, t_weight, targets, w_kd, w_ce, temperature: float, chunk_size: int,
                    per_token: torch.Tensor | None = None):
    """(weighted sum with gradients, KD sum, CE sum) over the selected tokens: hidden [n, h] of the student and
    t_hidden [n, h_t] of the teacher at the same positions, each output layer's vocabulary shard. `per_token`
    [n, 2] float32, if given, receives each token's (KD, CE)."""
    need = torch.is_grad_enabled()
    return _ChunkedVocabParallelKD.apply(hidden, weight, t_hidden.detach(), t_weight.detach(), targets, w_kd, w_ce,
                                         float(temperature), max(1, chunk_size), need and hidden.requires_grad,
                                         need and weight.requires_grad, per_token)


def full_logits_kd_terms(student_logits, teacher_logits, labels, loss_mask, temperature: float, config,
                         per_token: bool = False):
    """(KD sum, CE sum) over the supervised tokens, with gradients, from whole [s, b, V/TP] logits of both models:
    modelopt's LogitsKLLoss and Megatron's vocab_parallel_cross_entropy, masked (--lm-head-chunk-size 0, as
    Megatron-LM computes them). per_token: also each position's (KD, CE), [b, s, 2], without gradients."""
    from megatron.core.tensor_parallel import reduce_from_tensor_model_parallel_region, vocab_parallel_cross_entropy
    from modelopt.torch.distill.plugins.megatron import LogitsKLLoss

    mask = loss_mask.float()  # [b, s]
    kd_tokens, _, _ = LogitsKLLoss(config, temperature=temperature)(student_logits, teacher_logits.detach())
    kd_sum = (kd_tokens * mask).sum()  # [b, s]: this rank's vocabulary shard's part of each token's KL
    if config.tensor_model_parallel_size > 1:
        kd_sum = reduce_from_tensor_model_parallel_region(kd_sum)
    ce_tokens = vocab_parallel_cross_entropy(student_logits.float(), labels.transpose(0, 1).contiguous())
    ce_sum = (ce_tokens.transpose(0, 1) * mask).sum()
    if not per_token:
        return kd_sum, ce_sum
    kd_whole = kd_tokens.detach().float().contiguous()
    if config.tensor_model_parallel_size > 1:  # each rank holds its vocabulary shard's part of every token's KL
        from megatron.core import parallel_state as ps

        torch.distributed.all_reduce(kd_whole, group=ps.get_tensor_model_parallel_group())
    return kd_sum, ce_sum, torch.stack([kd_whole, ce_tokens.detach().float().transpose(0, 1)], dim=-1)
