"""Loss control against transformers: --loss-normalization sample (each conversation's mean over its supervised
tokens, then the mean over the global batch's conversations) and NEFTune (transformers' own hook, given the noise's
seed) on step 1, computed on each packed conversation alone; 3 steps unchanged at micro-batch 1 and 4, full logits,
TP2+SP, PP2, CP2 and DP2; NEFTune's noise the same at every layout and on a resume."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import WORKERS, torchrun
from tests.distributed.test_dpo import _sequences, rel

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.numerics, pytest.mark.timeout(900)]


WEIGHTS = (2.0, 0.5, None)  # record k of a weighted file: its answer's "weight" is WEIGHTS[k % 3] (None: none)


def write_data(path: Path, n: int, seed: int = 0, long_every: int = 2, weighted: bool = False) -> Path:
    """Answers of very different lengths: a letter, or a long string (so per-sample and per-token means differ);
    every `long_every`-th answer long. `weighted`: the answers carry WEIGHTS, the prompts their record's "#k"."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for k in range(n):
            word = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(2, 6)))
            answer = " ".join(word[::-1] for _ in range(rng.randint(6, 12))) if k % long_every == 0 else word[0]
            reply = {"role": "assistant", "content": answer}
            if weighted and WEIGHTS[k % 3] is not None:
                reply["weight"] = WEIGHTS[k % 3]
            prompt = f"say {word} #{k}" if weighted else f"say {word}"
            f.write(json.dumps({"messages": [{"role": "user", "content": prompt}, reply]}) + "\n")
    return path


def record_weight(tokenizer, tokens: torch.Tensor) -> float:
    """The weight the data file gave the conversation of `tokens` (found by its prompt's "#k"); 1 if unweighted."""
    import re

    found = re.search(r"#(\d+)", tokenizer.decode(tokens.tolist()))
    weight = WEIGHTS[int(found.group(1)) % 3] if found else None
    return 1.0 if weight is None else weight


@pytest.fixture(scope="module")
def runs(tiny_models, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("loss_control")
    data = write_data(out / "chats.jsonl", 48)
    # every answer long: another difficulty; and per-message weights (Σ w·loss / Σ w, over the blend)
    other = write_data(out / "other.jsonl", 40, seed=3, long_every=1, weighted=True)
    easy, hard = write_data(out / "easy.jsonl", 3, seed=5, long_every=99), write_data(out / "hard.jsonl", 2, seed=6,
                                                                                       long_every=1)
    merged = {"out": out, "valid_sets": (easy, hard)}
    for world_size in (1, 2):
        torchrun(WORKERS / "loss_control.py", world_size, ["--model", tiny_models["qwen3"], "--data", data,
                                                           "--data2", other, "--out", out,
                                                           "--valid-sets", easy, hard], timeout=600)
        merged.update(json.loads((out / f"loss_control_ws{world_size}.json").read_text()))
    return merged


def _losses(model, micro_batches: list[dict], noise_seed=None) -> list[tuple[torch.Tensor, int]]:
    """Per packed conversation, run alone through transformers: (summed CE of its supervised tokens, their
    number). noise_seed(sample id): seed the global RNG before the forward (NEFTune's hook draws from it)."""
    out = []
    for sample, tokens, mask in _sequences(micro_batches):
        if noise_seed is not None:
            torch.manual_seed(noise_seed(sample))
        logits = model(tokens[None], use_cache=False).logits[0, :-1].float()
        supervised = (mask > 0).float()
        out.append(((F.cross_entropy(logits, tokens[1:], reduction="none") * supervised).sum(), int(supervised.sum())))
    return out


def _norm(model) -> float:
    return torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None)).item()


def test_sample_normalisation_equals_transformers(runs, tiny_models):
    """Step 1: the mean over conversations of each one's mean token loss, and its gradient norm (1e-5); it differs
    from the token mean on this data by far more than the tolerance."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_models["qwen3"], dtype=torch.float32)
    per_sample = _losses(model, torch.load(runs["out"] / "first_sample_tp1.pt"))
    loss = torch.stack([s / n for s, n in per_sample]).mean()
    token_mean = sum(float(s.detach()) for s, _ in per_sample) / sum(n for _, n in per_sample)
    loss.backward()
    first = runs["sample_tp1"]["steps"][0]
    assert rel(first["loss"], loss.item()) <= 1e-6, (first, loss.item())
    assert rel(first["grad_norm"], _norm(model)) <= 1e-5, (first, _norm(model))
    assert abs(token_mean - loss.item()) > 1e-2, "the data must tell the two normalisations apart"


def test_neftune_equals_transformers_hook(runs, tiny_models):
    """Step 1 with NEFTune alpha 5: transformers' neftune_post_forward_hook on the embedding of each conversation
    alone, its RNG seeded as this run seeds that conversation's noise (--seed 7, iteration 1): loss and gradient
    norm (1e-5); without the noise the loss is another."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations.neftune import neftune_post_forward_hook

    from megatron_sft.training.neftune import sample_seed

    model = AutoModelForCausalLM.from_pretrained(tiny_models["qwen3"], dtype=torch.float32).train()
    batches = torch.load(runs["out"] / "first_neft_tp1.pt")
    with torch.no_grad():
        plain = sum(float(s) for s, _ in _losses(model, batches)) / sum(n for _, n in _losses(model, batches))
    embedding = model.get_input_embeddings()
    embedding.neftune_noise_alpha = 5.0
    embedding.register_forward_hook(neftune_post_forward_hook)
    per_sample = _losses(model, batches, noise_seed=lambda sample: sample_seed(7, sample, 1))
    loss = sum(s for s, _ in per_sample) / sum(n for _, n in per_sample)
    loss.backward()
    first = runs["neft_tp1"]["steps"][0]
    assert rel(first["loss"], loss.item()) <= 1e-5, (first, loss.item())
    assert rel(first["grad_norm"], _norm(model)) <= 1e-5, (first, _norm(model))
    assert abs(plain - loss.item()) > 1e-3, "the noise changes the loss"


def test_neftune_noise_is_transformers_draw():
    """One sample's noise = what transformers' hook adds to a [1, L, hidden] embedding output, bit for bit."""
    from transformers.integrations.neftune import neftune_post_forward_hook

    from megatron_sft.training.neftune import Neftune, sample_noise, sample_seed

    module = torch.nn.Module().train()
    module.neftune_noise_alpha = 5.0
    torch.manual_seed(sample_seed(7, 12, 3))
    theirs = neftune_post_forward_hook(module, None, torch.zeros(1, 37, 64))
    assert torch.equal(sample_noise(Neftune(5.0, 7, 3), 12, 37, 64), theirs)


@pytest.mark.parametrize("layout,reference", [
    ("sample_mbs1", "sample_tp1"), ("sample_mbs4", "sample_tp1"), ("sample_full_logits", "sample_tp1"),
    ("sample_tp2_sp", "sample_tp1"), ("sample_pp2", "sample_tp1"), ("sample_cp2", "sample_tp1"),
    ("sample_dp2", "sample_tp1"),
    ("neft_tp2_sp", "neft_tp1"), ("neft_pp2", "neft_tp1"), ("neft_cp2", "neft_tp1"), ("neft_dp2", "neft_tp1")])
def test_three_steps_do_not_depend_on_layout(runs, layout, reference):
    """Micro-batch 1 and 4, full logits, TP2+SP, PP2, CP2, DP2 = one process, micro-batch 2 (fp32 rounding): the
    per-sample weights and the noise follow each conversation wherever it is computed."""
    ref, got = runs[reference]["steps"], runs[layout]["steps"]
    assert len(got) == len(ref) == 3
    for step, (g, r) in enumerate(zip(got, ref)):
        assert rel(g["loss"], r["loss"]) <= 1e-6, (layout, step, g, r)
        assert rel(g["grad_norm"], r["grad_norm"]) <= 2e-6, (layout, step, g, r)


def test_neftune_resume_is_exact(runs):
    assert runs["neft_first2"]["steps"] + runs["neft_resumed2"]["steps"] == runs["neft_straight4"]["steps"]


BLENDS = ("blend_tp1", "blend_full_logits", "blend_tp2_sp", "blend_pp2", "blend_cp2", "blend_dp2")


def test_per_source_losses_equal_each_source_alone(runs, tiny_models):
    """A blend of two files, one with per-message weights: step 1's loss of each source = the weighted token mean
    of that source's conversations alone through transformers (1e-6; the weights as the data file gave them), with a
    pack that mixes the two, at one process, full logits, TP2+SP, PP2, CP2 and DP2 (every layout sees the same
    first global batch); the token and sample counts are the batch's; the sources' losses weighted by their summed
    weights average to the total, which is the weighted token mean of the whole global batch (loss 1e-6, gradient
    norm 1e-5)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_models["qwen3"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["qwen3"])
    batches = torch.load(runs["out"] / "first_blend_tp1.pt")
    source_of = {int(i): int(s) for b in batches for ids, srcs in zip(b["sample_ids"], b["sample_sources"])
                 for i, s in zip(ids.tolist(), srcs.tolist())}
    assert any(len(set(srcs.tolist())) == 2 for b in batches for srcs in b["sample_sources"]), "a mixed pack"
    losses = _losses(model, batches)
    samples = [(sample, record_weight(tokenizer, tokens)) for sample, tokens, _ in _sequences(batches)]
    assert {w for _, w in samples} == {1.0, 2.0, 0.5}
    expected = {}  # name -> (loss, supervised tokens, samples, summed weight)
    for index, name in enumerate(("chats", "other")):
        mine = [(s, n, w) for (s, n), (sample, w) in zip(losses, samples) if source_of[sample] == index]
        weight = sum(n * w for _, n, w in mine)
        expected[name] = (sum(float(s) * w for s, _, w in mine) / weight, sum(n for _, n, _ in mine), len(mine),
                          weight)
    reference = sum(s * w for (s, _), (_, w) in zip(losses, samples)) / sum(n * w for (_, n), (_, w) in
                                                                             zip(losses, samples))
    reference.backward(retain_graph=True)
    norm = _norm(model)
    for layout in BLENDS:
        first = runs[layout]["steps"][0]
        for name, (loss, tokens, count, _) in expected.items():
            assert rel(first[f"loss/{name}"], loss) <= 1e-6, (layout, name, first, loss)
            assert first[f"supervised_tokens/{name}"] == tokens and first[f"samples/{name}"] == count, layout
        total = sum(first[f"loss/{n}"] * e[3] for n, e in expected.items()) / sum(e[3] for e in expected.values())
        assert rel(total, first["loss"]) <= 1e-6, layout
        assert rel(first["loss"], reference.item()) <= 1e-6 and rel(first["grad_norm"], norm) <= 1e-5, (layout, first)
    model.zero_grad()
    (sum(s for s, _ in losses) / sum(n for _, n in losses)).backward()  # the same batch without the weights
    assert rel(norm, _norm(model)) > 1e-2, "the weights change the gradients"
    assert abs(expected["chats"][0] - expected["other"][0]) > 1e-3, "two sources of different difficulty"


@pytest.mark.parametrize("layout", BLENDS[1:])
def test_per_source_figures_do_not_depend_on_layout(runs, layout):
    """Every per-source figure of 3 steps, and validation's, at other layouts = one process (1e-6)."""
    ref, got = runs["blend_tp1"], runs[layout]
    for step, (g, r) in enumerate(zip(got["steps"], ref["steps"])):
        assert set(g) == set(r) and any(k.startswith("loss/") for k in r)
        for key in r:
            assert rel(g[key], r[key]) <= (2e-6 if key == "grad_norm" else 1e-6), (layout, step, key, g[key], r[key])
    assert got["validation"] and rel(got["validation"][0][1], ref["validation"][0][1]) <= 1e-6
    g, r = got["validation_figures"][0], ref["validation_figures"][0]
    assert {"loss/chats", "loss/other", "ppl/chats", "ppl/other"} <= set(r) and set(g) == set(r)
    assert all(abs(r[f"ppl/{n}"] - math.exp(r[f"loss/{n}"])) <= 1e-9 * r[f"ppl/{n}"] for n in ("chats", "other"))
    assert all(rel(g[k], r[k]) <= 1e-6 for k in r), (g, r)


def _file_losses(model, tokenizer, path: Path) -> tuple[float, int]:
    """(summed CE of the assistant answers' tokens and their end-of-turn, their number) of each conversation of a
    file alone through transformers; the supervised tokens found from transformers' own render."""
    total, count = 0.0, 0
    for line in path.read_text().splitlines():
        messages = json.loads(line)["messages"]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        head = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        start = len(tokenizer(head, add_special_tokens=False)["input_ids"])
        end = ids.index(tokenizer.convert_tokens_to_ids("<|im_end|>"), start) + 1
        with torch.no_grad():
            logits = model(torch.tensor([ids]), use_cache=False).logits[0, :-1].float()
        losses = F.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")
        total += float(losses[start - 1:end - 1].sum())
        count += end - start
    return total, count


def test_named_validation_sets_equal_transformers(runs, tiny_models):
    """--multiple-validation-sets with two --valid-data-path files: each file's validation loss (and perplexity) =
    the token mean of its conversations through transformers (1e-6, the initial weights: lr 0); the loss is both
    files' token mean; the same at PP2 and DP2."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_models["qwen3"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["qwen3"])
    sums = {path.stem: _file_losses(model, tokenizer, path) for path in runs["valid_sets"]}
    for layout in ("sets_tp1", "sets_pp2", "sets_dp2"):
        (iteration, loss), figures = runs[layout]["validation"][0], runs[layout]["validation_figures"][0]
        assert iteration == 1
        for name, (total, count) in sums.items():
            assert rel(figures[f"loss/{name}"], total / count) <= 1e-6, (layout, name, figures, total / count)
            assert rel(figures[f"ppl/{name}"], math.exp(total / count)) <= 1e-6
        both = sum(t for t, _ in sums.values()) / sum(c for _, c in sums.values())
        assert rel(loss, both) <= 1e-6, (layout, loss, both)
    assert abs(figures["loss/easy"] - figures["loss/hard"]) > 1e-2, "two sets of different difficulty"
