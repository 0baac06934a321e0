"""The preference losses of DPO and their metrics, on per-sequence log-probabilities.

Each pair has the summed log-probability of its chosen and of its rejected response under the model being trained
(the policy) and under the frozen reference, and its responses' token counts. With the log-ratios
    chosen = logp_c - ref_c,  rejected = logp_r - ref_r,  delta = chosen - rejected
the per-pair losses are (TRL 1.16's definitions):
    sigmoid  -log sigmoid(beta * delta); with label smoothing e (conservative DPO):
             -(1 - e) log sigmoid(beta * delta) - e log sigmoid(-beta * delta)
    ipo      (chosen / n_c - rejected / n_r - 1 / (2 beta))^2   (the log-ratios averaged over response tokens)
    hinge    relu(1 - beta * delta)
The step's loss is their mean over the pairs of the global batch, plus, with an SFT weight (RPO), that weight times
the chosen responses' negative log-likelihood averaged over all their tokens in the global batch.

Metrics, as TRL reports them: rewards/chosen and rewards/rejected (beta times the log-ratios), rewards/accuracies
(chosen reward above rejected), rewards/margins, logps/chosen, logps/rejected; means over pairs. They are returned
as sums, so micro-batches and data-parallel ranks add up before one division.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "hinge")
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected")


@dataclass(frozen=True)
class DpoSettings:
    loss_type: str = "sigmoid"
    beta: float = 0.1
    label_smoothing: float = 0.0
    sft_weight: float = 0.0  # RPO: weight of the chosen responses' token-mean NLL

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"DPO loss {self.loss_type!r}; expected one of {LOSS_TYPES}")


def pair_losses(s: DpoSettings, policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, tokens_chosen: torch.Tensor,
                tokens_rejected: torch.Tensor) -> torch.Tensor:
    """The preference loss of each pair [P] (before the mean over the global batch)."""
    chosen, rejected = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    if s.loss_type == "ipo":
        delta = chosen / tokens_chosen.clamp(min=1) - rejected / tokens_rejected.clamp(min=1)
        return (delta - 1 / (2 * s.beta)) ** 2
    logits = s.beta * (chosen - rejected)
    if s.loss_type == "hinge":
        return torch.relu(1 - logits)
    e = s.label_smoothing
    return -(1 - e) * F.logsigmoid(logits) - e * F.logsigmoid(-logits)


def metric_sums(s: DpoSettings, policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                ref_chosen: torch.Tensor, ref_rejected: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each metric summed over the pairs given (divide by the pair count of the whole batch)."""
    with torch.no_grad():
        reward_c = s.beta * (policy_chosen - ref_chosen)
        reward_r = s.beta * (policy_rejected - ref_rejected)
        values = (reward_c, reward_r, (reward_c > reward_r).to(reward_c.dtype), reward_c - reward_r,
                  policy_chosen, policy_rejected)
        return {name: v.double().sum() for name, v in zip(METRICS, values)}


def step_loss(s: DpoSettings, pairs: dict[str, torch.Tensor], chosen_nll_sum: torch.Tensor, total_pairs: int,
              total_chosen_tokens: int) -> torch.Tensor:
    """This micro-batch's share of the step's loss: its pairs' losses over all the batch's pairs, and the SFT term
    over all the batch's chosen tokens. The shares of every micro-batch and rank add up to the step's loss."""
    losses = pair_losses(s, pairs["policy_chosen"], pairs["policy_rejected"], pairs["ref_chosen"],
                         pairs["ref_rejected"], pairs["tokens_chosen"], pairs["tokens_rejected"])
    loss = losses.sum() / max(total_pairs, 1)
    if s.sft_weight:
        loss = loss + s.sft_weight * chosen_nll_sum / max(total_chosen_tokens, 1)
    return loss
