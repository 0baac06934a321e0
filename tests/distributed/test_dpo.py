"""DPO on Megatron-Core (the dpo app) against TRL 1.16.0's DPOTrainer fed the same tokens (sigmoid, IPO, hinge, RPO:
loss, metrics, gradient norm) and against transformers: the first step's loss, log-probabilities and gradient norm;
the stored reference log-probabilities against each sequence alone (so a pair packed with others = the pair alone);
3 steps at TP2, TP2+SP, PP2, DP2, CP2 and with full logits = one process, and EP2 on the hybrid MoE (Mamba,
attention and MoE layers) = its one process; an exact resume that reads the stored reference instead of computing
it again (and computes it again from the start model when the file is gone); another reference model (--ref-load);
a validation pairs file (--valid-data-path); LoRA. The losses alone against DPOTrainer, full gradients included:
tests/unit/test_dpo_loss.py."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import WORKERS, torchrun

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.numerics, pytest.mark.timeout(900)]
BETA = 0.2


def write_preferences(path: Path, n: int, seed: int) -> Path:
    """Prompts to reverse a word; chosen: the reversal, rejected: the word with a letter added."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            word = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(2, 6)))
            f.write(json.dumps({"prompt": [{"role": "user", "content": f"reverse {word}"}],
                                "chosen": [{"role": "assistant", "content": word[::-1]}],
                                "rejected": [{"role": "assistant", "content": word + "x"}]}) + "\n")
    return path


@pytest.fixture(scope="module")
def runs(tiny_models, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("dpo")
    data = write_preferences(out / "prefs.jsonl", 48, seed=0)
    valid = write_preferences(out / "valid.jsonl", 16, seed=1)
    reference = perturbed_copy(tiny_models["qwen3"], out / "ref_model")
    merged = {"out": out}
    for world_size in (1, 2):
        torchrun(WORKERS / "dpo.py", world_size, ["--model", tiny_models["qwen3"], "--moe-model",
                                                  tiny_models["nemotron_h_moe"], "--ref-model", reference,
                                                  "--data", data, "--valid-data", valid, "--out", out],
                 timeout=600)
        merged.update(json.loads((out / f"dpo_ws{world_size}.json").read_text()))
    return merged


def perturbed_copy(source: Path, out: Path) -> Path:
    """The tiny model with every weight moved by noise: a reference other than the model DPO starts from."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def _sequences(micro_batches: list[dict]):
    """(sample id, tokens, loss mask of the positions predicting tokens[1:]) of every sequence in the batches."""
    for batch in micro_batches:
        for row in range(batch["tokens"].shape[0]):
            cu, cu_padded = (batch[k][row] if isinstance(batch[k], list) else batch[k]
                             for k in ("cu_seqlens", "cu_seqlens_padded"))
            for k, sample in enumerate(batch["sample_ids"][row].tolist()):
                start, n = int(cu_padded[k]), int(cu[k + 1] - cu[k])
                yield sample, batch["tokens"][row, start:start + n], batch["loss_mask"][row, start:start + n - 1]


def _segment_logps(model, micro_batches: list[dict]) -> tuple[torch.Tensor, list[int]]:
    """Each sequence's summed response log-probability, run alone through transformers; and its sample id."""
    sums, ids = [], []
    for sample, tokens, mask in _sequences(micro_batches):
        logits = model(tokens[None], use_cache=False).logits[0, :-1].float()
        token_logps = torch.gather(F.log_softmax(logits, -1), 1, tokens[1:, None])[:, 0]
        sums.append((token_logps * mask).sum())
        ids.append(sample)
    return torch.stack(sums), ids


def test_first_step_equals_transformers(runs, tiny_models):
    """Step 1 (policy = reference): loss ln 2, the log-prob metrics, and the gradient norm of the mean sigmoid loss
    over the global batch's pairs, computed here with transformers and autograd."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_models["qwen3"], dtype=torch.float32)
    logps, ids = _segment_logps(model, torch.load(runs["out"] / "dpo_first_batch.pt"))
    chosen = torch.tensor([i % 2 == 0 for i in ids])
    delta = logps[chosen] - logps[~chosen]
    loss = -F.logsigmoid(BETA * (delta - delta.detach())).mean()
    loss.backward()
    norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None)).item()
    first = runs["tp1"]["steps"][0]
    assert rel(first["loss"], loss.item()) <= 1e-6 and rel(first["grad_norm"], norm) <= 1e-5, (first, norm)
    assert rel(first["logps/chosen"], logps[chosen].mean().item()) <= 1e-5
    assert rel(first["logps/rejected"], logps[~chosen].mean().item()) <= 1e-5
    assert abs(first["rewards/margins"]) <= 1e-5, "the reference is the starting model"


def test_stored_reference_equals_each_sequence_alone(runs, tiny_models):
    """Computed once over packs (pairs side by side with others), stored beside the data cache: = transformers on
    each sequence alone."""
    from transformers import AutoModelForCausalLM

    import numpy as np

    stored = np.load(runs["tp1"]["reference_file"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["qwen3"], dtype=torch.float32)
    with torch.no_grad():
        logps, ids = _segment_logps(model, torch.load(runs["out"] / "dpo_first_batch.pt"))
    for value, sample in zip(logps.tolist(), ids):
        assert rel(float(stored[sample]), value) <= 1e-6, (sample, float(stored[sample]), value)


# 3 steps at other layouts: the same arithmetic in another order (TP partial sums, PP/DP/CP reductions): fp32
# rounding. The gradient of a pair is the difference of its two sequences' gradients, so its rounding shows at
# ~1e-6 of the norm; a token counted twice, a sequence split across ranks or a pair counted per CP rank is > 1e-3.
@pytest.mark.parametrize("layout", ["tp2", "tp2_sp", "pp2", "dp2", "cp2", "full_logits", "moe_ep2"])
def test_three_steps_do_not_depend_on_layout(runs, layout):
    ref, got = runs["moe_tp1" if layout.startswith("moe") else "tp1"]["steps"], runs[layout]["steps"]
    assert len(got) == len(ref) == 3
    for step, (g, r) in enumerate(zip(got, ref)):
        assert rel(g["loss"], r["loss"]) <= 1e-6, (layout, step, g, r)
        assert rel(g["grad_norm"], r["grad_norm"]) <= 2e-6, (layout, step, g, r)
        for name in ("logps/chosen", "logps/rejected"):
            assert rel(g[name], r[name]) <= 1e-6, (layout, step, name)
        assert abs(g["rewards/margins"] - r["rewards/margins"]) <= 1e-6 * max(1.0, abs(r["rewards/margins"]))


def test_training_moves_the_margin(runs):
    steps = runs["straight6"]["steps"]
    assert steps[-1]["rewards/margins"] > 0.1 and steps[-1]["loss"] < steps[0]["loss"]


def test_resume_is_exact_and_reads_the_stored_reference(runs):
    assert runs["first3"]["steps"] + runs["resumed3"]["steps"] == runs["straight6"]["steps"]
    assert runs["tp1"]["reference_passes"] == 1, "the first run computes the reference log-probs"
    passes = [runs[name]["reference_passes"] for name in ("tp2", "pp2", "dp2", "straight6", "first3", "resumed3")]
    assert passes == [0] * len(passes), "every later run (same data, same reference) reads the stored file"
    # context parallelism pads samples into a data cache of its own, so it has a reference file of its own
    assert runs["cp2"]["reference_passes"] == 1 and runs["cp2"]["cache"] != runs["tp1"]["cache"]


def test_validation_pairs_give_the_dpo_loss(runs):
    """--split with a validation share: the DPO loss of the held-out pairs, below ln 2 once training moved them."""
    (iteration, loss), *_ = runs["validated"]["validation"]
    assert iteration == 3 and 0.0 < loss < 0.6931, loss


def test_a_validation_pairs_file(runs):
    """--train-data-path / --valid-data-path: the held-out pairs get a cache and reference log-probs of their own
    (sample ids start at 0 in each cache, so a wrong lookup shows). Before training the policy is the reference:
    loss ln 2 and zero rewards exactly; after 3 steps, validation as with --split."""
    loss, metrics = runs["valid_file"]["validation_before_training"]
    assert abs(loss - 0.693147) <= 1e-6 and abs(metrics["rewards/margins"]) <= 1e-7, (loss, metrics)
    assert metrics["logps/chosen"] < 0 and metrics["rewards/accuracies"] == 0.0
    (iteration, after), *_ = runs["valid_file"]["validation"]
    assert iteration == 3 and 0.0 < after < 0.6931, after
    # the training pairs prepared whole are tp1's cache (same file, same 100,0,0 split): its file is read; the
    # held-out pairs' cache gets its own pass
    assert runs["valid_file"]["reference_passes"] == 1 and runs["valid_file"]["cache"] == runs["tp1"]["cache"]


def test_a_lost_reference_is_computed_again_from_the_start_model_on_resume(runs):
    """The stored file deleted between a stop and its resume: the resume loads the recorded reference (the start
    model) for one pass while the trained weights wait, writes the same file, and trains on exactly as before."""
    resumed = runs["resumed3_recomputed"]
    assert resumed["reference_passes"] == 1 and resumed["same_file"]
    assert runs["first3_again"]["steps"] + resumed["steps"] == runs["straight6"]["steps"]


def test_another_reference_model(runs, tiny_models):
    """--ref-load a perturbed copy at TP2: the stored reference = transformers on that copy, and step 1 = the loss,
    metrics and gradient norm of the start model against it (so the policy kept its own weights after the pass)."""
    import numpy as np
    from transformers import AutoModelForCausalLM

    batches = torch.load(runs["out"] / "dpo_first_batch.pt")
    reference = AutoModelForCausalLM.from_pretrained(runs["out"] / "ref_model", dtype=torch.float32)
    with torch.no_grad():
        ref, ids = _segment_logps(reference, batches)
    stored = np.load(runs["other_ref"]["reference_file"])
    assert all(rel(float(stored[i]), v) <= 1e-6 for v, i in zip(ref.tolist(), ids))
    model = AutoModelForCausalLM.from_pretrained(tiny_models["qwen3"], dtype=torch.float32)
    logps, _ = _segment_logps(model, batches)
    chosen = torch.tensor([i % 2 == 0 for i in ids])
    delta = (logps[chosen] - ref[chosen]) - (logps[~chosen] - ref[~chosen])
    loss = -F.logsigmoid(BETA * delta).mean()
    loss.backward()
    norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None)).item()
    first = runs["other_ref"]["steps"][0]
    assert rel(first["loss"], loss.item()) <= 1e-6 and rel(first["grad_norm"], norm) <= 1e-5, (first, loss, norm)
    assert rel(first["rewards/margins"], BETA * delta.mean().item()) <= 1e-5
    assert rel(first["logps/chosen"], logps[chosen].mean().item()) <= 1e-5
    assert abs(first["loss"] - 0.6931) > 1e-3, "a reference other than the policy moves the first loss off ln 2"


TRL_CASES = {"sigmoid": (["sigmoid"], None, 0.2), "ipo": (["ipo"], None, 0.5), "hinge": (["hinge"], None, 0.3),
             "rpo": (["sigmoid", "sft"], [1.0, 0.7], 0.1)}  # = the worker's TRL_CASES flags


def _trl_inputs(micro_batches: list[dict]) -> list[dict]:
    """The global batch's pairs as TRL's tokenized examples: per sequence, the tokens before its first supervised
    token (prompt) and from there to its last supervised token (completion), exactly the tokens this run saw."""
    sequences = {}
    for sample, tokens, mask in _sequences(micro_batches):
        tokens, supervised = tokens.tolist(), (mask.nonzero()[:, 0] + 1).tolist()
        assert supervised == list(range(supervised[0], supervised[-1] + 1)), "one response, contiguous"
        sequences[sample] = (tokens[:supervised[0]], tokens[supervised[0]:supervised[-1] + 1])
    pairs = []
    for sample in sorted(s for s in sequences if s % 2 == 0):
        (prompt, chosen), (prompt_r, rejected) = sequences[sample], sequences[sample + 1]
        assert prompt == prompt_r
        pairs.append({"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected})
    return pairs


@pytest.mark.parametrize("case", sorted(TRL_CASES))
def test_a_megatron_step_equals_trl_dpo_trainer(runs, tiny_models, case, tmp_path):
    """The dpo app's first step (Megatron-Core, chunked LM head, packed pairs, reference from --ref-load) against
    TRL 1.16.0's DPOTrainer fed the same pairs' tokens: loss, TRL's six metrics, the gradient norm and every
    parameter's gradient (Megatron's main_grad mapped to Hugging Face's names by the writer), fp32, 1e-5.
    (TRL is given the tokens: its own rendering of Qwen3 also supervises the newline after <|im_end|>, which this
    project's SFT masking leaves out.)"""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from megatron_sft.training.dpo_loss import METRICS

    loss_type, weights, beta = TRL_CASES[case]
    pairs = _trl_inputs(torch.load(runs["out"] / "dpo_first_batch.pt"))
    policy = AutoModelForCausalLM.from_pretrained(tiny_models["qwen3"], dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(runs["out"] / "ref_model", dtype=torch.float32)
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=len(pairs), beta=beta,
                     loss_type=loss_type, loss_weights=weights, report_to="none", use_cpu=True, max_length=None,
                     disable_dropout=True, dataloader_num_workers=0, seed=0, bf16=False)
    placeholder = Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}])  # replaced below
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=placeholder,
                         processing_class=AutoTokenizer.from_pretrained(tiny_models["qwen3"]))
    trainer.train_dataset = Dataset.from_list(pairs)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in trainer.model.parameters() if p.grad is not None))
    ours = runs[f"trl_{case}"]["steps"][0]
    assert rel(ours["loss"], loss.item()) <= 1e-5, (case, ours["loss"], loss.item())
    for name in METRICS:
        theirs = trainer._metrics["train"][name][-1]
        assert abs(ours[name] - theirs) <= 1e-5 * max(1.0, abs(theirs)), (case, name, ours[name], theirs)
    assert rel(ours["grad_norm"], norm.item()) <= 1e-5, (case, ours["grad_norm"], norm.item())
    grads = torch.load(runs["out"] / f"grads_{case}.pt")  # the step's main_grad, under Hugging Face's names
    for name, p in trainer.model.named_parameters():
        scale = max(p.grad.abs().max().item(), 1e-12)
        worst = (grads[name] - p.grad).abs().max().item() / scale
        assert worst <= 1e-5, f"{case}: {name} differs by {worst:.2e} of its largest entry"


def test_lora_dpo_trains_adapters_against_the_base(runs):
    """LoRA at TP2: the adapters start at zero, so the reference is the base model: step 1 is ln 2 with zero
    rewards, and the base's stored log-probs (tp1's file: same model, same data) are read, not computed. The
    adapters train and --save-hf writes them as a PEFT adapter."""
    lora = runs["lora_tp2"]
    first, last = lora["steps"][0], lora["steps"][-1]
    assert abs(first["loss"] - 0.693147) <= 1e-6 and abs(first["rewards/margins"]) <= 1e-7 and first["grad_norm"] > 0
    assert last["loss"] < first["loss"] and last["rewards/margins"] > 0
    assert lora["reference_passes"] == 0 and lora["reference_file"] == runs["tp1"]["reference_file"]
    hf = runs["out"] / "lora_ckpt" / "iter_0000003" / "hf"
    assert (hf / "adapter_config.json").is_file() and (hf / "adapter_model.safetensors").is_file()
    assert json.loads((hf / "parity.json").read_text())["adapter"]["ok"], "peft loads it onto the base: same logits"


def test_per_source_pair_losses_equal_transformers(runs, tiny_models):
    """A blend of two pair files against another reference model: step 1's loss/<source> = the mean sigmoid DPO
    loss of that source's pairs, from transformers' log-probs of the start and the reference model (1e-5), with
    their chosen tokens and pairs, at one process, PP2, CP2 and DP2; weighted by pairs they average to the loss."""
    from transformers import AutoModelForCausalLM

    batches = torch.load(runs["out"] / "dpo_first_batch_blend.pt")
    source_of = {int(i): int(s) for b in batches for ids, srcs in zip(b["sample_ids"], b["sample_sources"])
                 for i, s in zip(ids.tolist(), srcs.tolist())}
    with torch.no_grad():
        policy, ids = _segment_logps(AutoModelForCausalLM.from_pretrained(tiny_models["qwen3"],
                                                                          dtype=torch.float32), batches)
        ref, _ = _segment_logps(AutoModelForCausalLM.from_pretrained(runs["out"] / "ref_model", dtype=torch.float32),
                                batches)
    at = {sample: k for k, sample in enumerate(ids)}
    tokens = {sample: float(mask.sum()) for sample, _, mask in _sequences(batches)}
    expected = {0: [0.0, 0, 0.0], 1: [0.0, 0, 0.0]}  # source -> [summed pair loss, pairs, chosen tokens]
    for c in (s for s in ids if s % 2 == 0):
        r = c + 1
        delta = (policy[at[c]] - ref[at[c]]) - (policy[at[r]] - ref[at[r]])
        entry = expected[source_of[c]]
        entry[0] += float(-F.logsigmoid(BETA * delta))
        entry[1] += 1
        entry[2] += tokens[c]
    assert all(e[1] for e in expected.values()), "both sources in the first global batch"
    for layout in ("blend_tp1", "blend_pp2", "blend_cp2", "blend_dp2"):
        first = runs[layout]["steps"][0]
        for index, name in enumerate(("prefs", "valid")):
            loss, pairs, chosen = expected[index]
            assert rel(first[f"loss/{name}"], loss / pairs) <= 1e-5, (layout, name, first, loss / pairs)
            assert first[f"samples/{name}"] == pairs and first[f"supervised_tokens/{name}"] == chosen, layout
        mean = sum(first[f"loss/{n}"] * first[f"samples/{n}"] for n in ("prefs", "valid"))
        assert rel(mean / sum(e[1] for e in expected.values()), first["loss"]) <= 1e-6, layout
    assert abs(first["loss"] - 0.6931) > 1e-3, "pair losses off ln 2 (another reference)"
