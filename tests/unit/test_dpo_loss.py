"""The DPO losses and metrics (training/dpo_loss.py) against TRL 1.16.0's DPOTrainer on its own batch: a tiny Qwen3
policy, a perturbed copy as the reference, 4 pairs. TRL computes the log-probabilities, the loss, the metrics and the
policy's gradients; here the test computes the per-sequence log-probabilities from the same batch with transformers
and only the loss and metrics come from the code under test (fp32, 1e-5)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from megatron_sft.training.dpo_loss import METRICS, DpoSettings, metric_sums, pair_losses, step_loss

pytestmark = [pytest.mark.numerics, pytest.mark.slow]  # a TRL trainer per case: ~17 s

PAIRS = [
    {"prompt": [{"role": "user", "content": "What is 2+2?"}], "chosen": [{"role": "assistant", "content": "4."}],
     "rejected": [{"role": "assistant", "content": "It is five, I think."}]},
    {"prompt": [{"role": "user", "content": "Name a colour."}], "chosen": [{"role": "assistant", "content": "Blue"}],
     "rejected": [{"role": "assistant", "content": "Seven"}]},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}],
     "chosen": [{"role": "assistant", "content": "Paris."}],
     "rejected": [{"role": "assistant", "content": "London, the capital of England."}]},
    {"prompt": [{"role": "user", "content": "Say hi"}], "chosen": [{"role": "assistant", "content": "Hi!"}],
     "rejected": [{"role": "assistant", "content": "No."}]},
]
CASES = {"sigmoid": (["sigmoid"], None, DpoSettings("sigmoid", beta=0.1)),
         "ipo": (["ipo"], None, DpoSettings("ipo", beta=0.5)),
         "hinge": (["hinge"], None, DpoSettings("hinge", beta=0.3)),
         "rpo": (["sigmoid", "sft"], [1.0, 0.7], DpoSettings("sigmoid", beta=0.1, sft_weight=0.7))}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from megatron_sft.tiny import make_tiny_model

    path = make_tiny_model("qwen3", tmp_path_factory.mktemp("dpo") / "qwen3")
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    reference = copy.deepcopy(policy)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return path, policy, reference


def _trl(models, loss_type, weights, beta, tmp_path):
    """TRL's loss, metrics and policy gradients on its first batch (all 4 pairs), and that batch."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    path, policy, reference = models
    policy, reference = copy.deepcopy(policy), copy.deepcopy(reference)
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, beta=beta, loss_type=loss_type,
                     loss_weights=weights, report_to="none", use_cpu=True, max_length=None,
                     disable_dropout=True, dataloader_num_workers=0, seed=0, bf16=False)  # fp32 throughout
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=Dataset.from_list(PAIRS),
                         processing_class=AutoTokenizer.from_pretrained(path))
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    metrics = {m: trainer._metrics["train"][m][-1] for m in METRICS}
    return loss.item(), metrics, grads, batch


def _sequence_logps(model, batch):
    """Summed log-probabilities of the completion tokens, and their counts, per row (written here, with
    transformers' logits)."""
    ids, attention, completion = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    logits = model(input_ids=ids, attention_mask=attention, use_cache=False).logits[:, :-1].float()
    token_logps = torch.gather(F.log_softmax(logits, -1), 2, ids[:, 1:, None])[..., 0]
    mask = completion[:, 1:].float()
    return (token_logps * mask).sum(1), mask.sum(1), token_logps, mask


@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_metrics_and_gradients_equal_trl(models, case, tmp_path):
    loss_type, weights, settings = CASES[case]
    trl_loss, trl_metrics, trl_grads, batch = _trl(models, loss_type, weights, settings.beta, tmp_path)
    _, policy, reference = models
    policy = copy.deepcopy(policy)
    policy.train()
    logps, counts, token_logps, mask = _sequence_logps(policy, batch)
    with torch.no_grad():
        ref_logps = _sequence_logps(reference, batch)[0]
    n = len(PAIRS)
    pairs = {"policy_chosen": logps[:n], "policy_rejected": logps[n:], "ref_chosen": ref_logps[:n],
             "ref_rejected": ref_logps[n:], "tokens_chosen": counts[:n], "tokens_rejected": counts[n:]}
    chosen_nll = -(token_logps[:n] * mask[:n]).sum()
    loss = step_loss(settings, pairs, chosen_nll, total_pairs=n, total_chosen_tokens=int(mask[:n].sum()))
    assert abs(loss.item() - trl_loss) <= 1e-5 * max(1.0, abs(trl_loss)), (loss.item(), trl_loss)
    sums = metric_sums(settings, *(pairs[k] for k in ("policy_chosen", "policy_rejected", "ref_chosen",
                                                       "ref_rejected")))
    for name in METRICS:
        assert abs(float(sums[name]) / n - trl_metrics[name]) <= 1e-5 * max(1.0, abs(trl_metrics[name])), name
    loss.backward()
    worst = max((p.grad - trl_grads[name]).abs().max().item() / max(trl_grads[name].abs().max().item(), 1e-12)
                for name, p in policy.named_parameters())
    assert worst <= 1e-5, f"largest gradient difference {worst:.2e} of the largest entry"


def test_label_smoothing_is_conservative_dpo():
    """e > 0 (TRL 1.16's sigmoid has none): -(1-e) log sigmoid(b d) - e log sigmoid(-b d), written out."""
    d = torch.tensor([-2.0, 0.0, 3.0])
    s = DpoSettings("sigmoid", beta=0.5, label_smoothing=0.2)
    got = pair_losses(s, d, torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.ones(3), torch.ones(3))
    want = torch.tensor([-(0.8 * torch.log(torch.sigmoid(torch.tensor(0.5 * x))) +
                           0.2 * torch.log(torch.sigmoid(torch.tensor(-0.5 * x)))) for x in d.tolist()])
    assert torch.allclose(got, want, atol=1e-7)
