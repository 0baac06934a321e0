"""Distillation (finetune with a teacher) on Megatron-Core against transformers: the first step's KD loss, LM loss,
gradient norm and every parameter's gradient recomputed from the two models' logits (KL(teacher || student) at
temperature 2 on the supervised tokens, mean over the global batch's supervised tokens; and Megatron-LM's
LM + scale x rescaled KD per micro-batch); the chunked loss = modelopt's LogitsKLLoss on whole logits; 3 steps at
TP2, TP2+SP, PP2, DP2, CP2 = one process, and EP2 on the hybrid MoE = its one process; the teacher frozen (no
gradient, no optimizer state, weights unchanged); resume exact with the teacher taken from the checkpoint's record;
the checkpoint and its Hugging Face output hold the student only. The student has half the teacher's layers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import WORKERS, torchrun
from tests.distributed.test_dpo import _sequences, rel
from tests.distributed.workers.kd import YAML

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.numerics, pytest.mark.timeout(900)]
T = 2.0


def write_data(path: Path, n: int, task: str = "reverse") -> Path:
    import random

    rng = random.Random(0 if task == "reverse" else 1)
    with open(path, "w") as f:
        for _ in range(n):
            word = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(2, 7)))
            answer = word[::-1] if task == "reverse" else " ".join(sorted(word) * 4)  # long: packs mix the two
            f.write(json.dumps({"messages": [{"role": "user", "content": f"{task} {word}"},
                                             {"role": "assistant", "content": answer}]}) + "\n")
    return path


def noisy_copy(source: Path, out: Path, scale: float, only: str = ".", **overrides) -> Path:
    """The tiny model with every weight whose name matches `only` moved by noise (a teacher that disagrees with the
    student); `overrides` change its config first (fewer layers: the first ones kept)."""
    import re

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(source)
    for key, value in overrides.items():
        setattr(config, key, value)
    model = AutoModelForCausalLM.from_pretrained(source, config=config, dtype=torch.float32)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if re.search(only, name):
                p.add_(scale * torch.randn(p.shape, generator=generator))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def runs(tiny_models, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("kd")
    data = write_data(out / "chats.jsonl", 48)
    other = write_data(out / "other.jsonl", 40, task="sort")  # a second source for the blend runs
    for key, text in YAML.items():
        (out / f"kd_{key}.yaml").write_text(text)
    from transformers import AutoConfig

    layers = AutoConfig.from_pretrained(tiny_models["qwen3"]).num_hidden_layers
    teacher = noisy_copy(tiny_models["qwen3"], out / "teacher", 0.3)
    student = noisy_copy(tiny_models["qwen3"], out / "student", 0.0, num_hidden_layers=layers // 2,
                         layer_types=AutoConfig.from_pretrained(tiny_models["qwen3"]).layer_types[:layers // 2])
    # Mamba layers left as they are: transformers' NemotronH scan (torch_forward, the reference) loses accuracy when
    # they move far from their initialisation (3e-4 of the largest logit here with noise 0.05 on every
    # weight)
    moe_teacher = noisy_copy(tiny_models["nemotron_h_moe"], out / "moe_teacher", 0.3,
                             only=r"mixer\.(gate|experts|shared_experts|[qkvo]_proj)|embeddings|lm_head")
    merged = {"out": out, "teacher": teacher, "student": student}
    for world_size in (1, 2):
        torchrun(WORKERS / "kd.py", world_size, ["--student", student, "--teacher", teacher, "--moe-student",
                                                 tiny_models["nemotron_h_moe"], "--moe-teacher", moe_teacher,
                                                 "--data", data, "--data2", other, "--out", out], timeout=600)
        merged.update(json.loads((out / f"kd_ws{world_size}.json").read_text()))
    return merged


def hand_step(student, teacher, micro_batches: list[dict], mix: bool) -> dict:
    """The first step's loss from transformers' logits of each packed sequence alone, and its gradients (autograd
    into `student`): KD_t = sum_v p_T(v) (log p_T(v) - log p_S(v)), p = softmax(logits / T); CE_t the token's
    cross-entropy; mean over the global batch's supervised tokens. mix: per micro-batch, CE + 0.5 x KD x (CE / KD)
    with the ratio a constant (Megatron-LM's rescaling); else KD alone."""
    total, kd_all, ce_all, count = 0.0, 0.0, 0.0, 0.0
    for batch in micro_batches:
        kd_m, ce_m = torch.zeros(()), torch.zeros(())
        for _, tokens, mask in _sequences([batch]):
            s = student(tokens[None], use_cache=False).logits[0, :-1].float()
            with torch.no_grad():
                t = teacher(tokens[None], use_cache=False).logits[0, :-1].float()
            log_t, log_s = F.log_softmax(t / T, -1), F.log_softmax(s / T, -1)
            kd_tokens = (log_t.exp() * (log_t - log_s)).sum(-1)
            ce_tokens = F.cross_entropy(s, tokens[1:], reduction="none")
            kd_m = kd_m + (kd_tokens * mask).sum()
            ce_m = ce_m + (ce_tokens * mask).sum()
            count += float(mask.sum())
        weight = 0.5 * (ce_m / kd_m).detach() if mix else 1.0
        total = total + weight * kd_m + (ce_m if mix else 0.0)
        kd_all, ce_all = kd_all + kd_m.detach(), ce_all + ce_m.detach()
    loss = total / count
    loss.backward()
    norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in student.parameters() if p.grad is not None))
    return {"loss": loss.item(), "kd_loss": float(kd_all) / count, "lm_loss": float(ce_all) / count,
            "grad_norm": norm.item()}


@pytest.mark.parametrize("run", ["tp1", "mix_tp1"])
def test_first_step_equals_transformers(runs, run):
    """Loss, KD and LM figures, gradient norm and every parameter's gradient (Megatron's main_grad under Hugging
    Face's names), fp32, 1e-5."""
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(runs["student"], dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(runs["teacher"], dtype=torch.float32)
    expected = hand_step(student, teacher, torch.load(runs["out"] / "kd_first_batch.pt"), mix=run.startswith("mix"))
    first = runs[run]["steps"][0]
    for key in ("loss", "kd_loss", "lm_loss", "grad_norm"):
        assert rel(first[key], expected[key]) <= 1e-5, (run, key, first[key], expected[key])
    assert expected["kd_loss"] > 0.05, "a teacher that disagrees with the student"
    grads = torch.load(runs["out"] / f"kd_grads_{run}.pt")
    for name, p in student.named_parameters():
        scale = max(p.grad.abs().max().item(), 1e-12)
        worst = (grads[name] - p.grad).abs().max().item() / scale
        assert worst <= 1e-5, f"{run}: {name} differs by {worst:.2e} of its largest entry"


def test_first_moe_step_equals_transformers(runs, tiny_models):
    """The hybrid MoE student (Mamba, attention and MoE layers) and its noisy copy as teacher: loss, KD and LM
    figures (1e-5) and gradient norm (5e-5) of step 1 = transformers' NemotronH (EP2 is compared with this run
    below)."""
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(tiny_models["nemotron_h_moe"], dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(runs["out"] / "moe_teacher", dtype=torch.float32)
    expected = hand_step(student, teacher, torch.load(runs["out"] / "kd_first_batch_moe.pt"), mix=False)
    first = runs["moe_tp1"]["steps"][0]
    for key in ("loss", "kd_loss", "lm_loss"):
        assert rel(first[key], expected[key]) <= 1e-5, ("moe_tp1", key, first[key], expected[key])
    # backward through transformers' Mamba scan adds its rounding (1.3e-5 seen); a wrong token or expert is > 1e-3
    assert rel(first["grad_norm"], expected["grad_norm"]) <= 5e-5, (first["grad_norm"], expected["grad_norm"])


# 3 steps at other layouts: the same arithmetic in another order (fp32 rounding); a token counted twice, a
# vocabulary shard's KL left out or a teacher hidden state from another position is > 1e-3.
@pytest.mark.parametrize("layout,reference", [
    ("tp2", "tp1"), ("tp2_sp", "tp1"), ("pp2", "tp1"), ("dp2", "tp1"), ("cp2", "tp1"),
    ("full_logits", "tp1"), ("moe_ep2", "moe_tp1"),
    ("mix_tp2", "mix_tp1"), ("mix_pp2", "mix_tp1"), ("mix_cp2", "mix_tp1"), ("mix_full_logits", "mix_tp1")])
def test_three_steps_do_not_depend_on_layout(runs, layout, reference):
    """full_logits: --lm-head-chunk-size 0, modelopt's LogitsKLLoss on whole logits of both models."""
    ref, got = runs[reference]["steps"], runs[layout]["steps"]
    assert len(got) == len(ref) == 3
    for step, (g, r) in enumerate(zip(got, ref)):
        for key in ("loss", "kd_loss", "lm_loss"):
            assert rel(g[key], r[key]) <= 1e-6, (layout, step, key, g[key], r[key])
        assert rel(g["grad_norm"], r["grad_norm"]) <= 2e-6, (layout, step, g, r)


def test_the_teacher_is_frozen(runs):
    """In every run: no parameter of the teacher requires a gradient or has one (nor Megatron's main_grad), none is
    in the optimizer, its weights and buffers (the MoE router's too) are bit-identical after training, and it runs
    in the run's dtype."""
    for name, run in runs.items():
        if not isinstance(run, dict) or "teacher" not in run:
            continue
        state = run["teacher"]
        assert state["tensors"] > 0 and state["dtypes"] == ["torch.float32"], (name, state)
        assert state["requires_grad"] == state["grads"] == state["in_optimizer"] == state["changed"] == 0, (name, state)


def test_distillation_trains(runs):
    steps = runs["straight5"]["steps"]
    assert steps[-1]["kd_loss"] < steps[0]["kd_loss"]


def test_validation_reports_the_lm_loss(runs):
    """--split with a validation share at PP2: validation at iterations 2 and at the end is the student's LM loss
    on the held-out packs (near ln 512 for these untrained tiny models), as Megatron-LM reports it."""
    (iteration, loss), *_ = runs["validated"]["validation"]
    assert iteration == 2 and 5.0 < loss < 7.0, runs["validated"]["validation"]


def test_resume_is_exact_with_the_recorded_teacher(runs):
    """5 steps straight = 3, a save, and 2 more from the checkpoint naming neither teacher nor YAML (recorded)."""
    assert runs["first3"]["steps"] + runs["resumed2"]["steps"] == runs["straight5"]["steps"]


def test_checkpoints_hold_the_student_only(runs):
    """--save-hf of a distillation run: the student's layers and tensors (the teacher has twice the layers), and
    the parity check of the written model passed."""
    from safetensors import safe_open

    hf = runs["out"] / "resume_ckpt" / "iter_0000003" / "hf"
    config = json.loads((hf / "config.json").read_text())
    student = json.loads((runs["student"] / "config.json").read_text())
    assert config["num_hidden_layers"] == student["num_hidden_layers"]
    names = set()
    for file in hf.glob("*.safetensors"):
        with safe_open(file, "pt") as f:
            names |= set(f.keys())
    with safe_open(runs["student"] / "model.safetensors", "pt") as f:
        assert names == set(f.keys())
    assert json.loads((hf / "parity.json").read_text())["model"]["ok"]


def test_another_teacher_on_resume_is_refused(runs):
    from megatron_sft.apps import parse
    from megatron_sft.errors import UserError
    from megatron_sft.training.kd import with_teacher

    cfg = parse("finetune", ["--load", str(runs["out"] / "resume_ckpt"), "--export-kd-teacher-load",
                             str(runs["student"]), "--train-iters", "5", "--lr", "1e-3", "--device", "cpu",
                             "--seq-length", "128", "--data-path", str(runs["out"] / "chats.jsonl"),
                             "--tensor-model-parallel-size", "2"], world_size=2)
    with pytest.raises(UserError, match="distills from .*teacher"):
        with_teacher(cfg)


BLENDS = ("blend_tp1", "blend_full_logits", "blend_tp2_sp", "blend_pp2", "blend_cp2")


def test_per_source_objective_equals_transformers(runs):
    """A blend of two files (LM + 0.5 x rescaled KD): step 1's loss/<source> = that source's tokens' share of the
    objective, w_KD x KD_t + CE_t with each micro-batch's w_KD, computed from transformers' logits (1e-5), at one
    process, full logits, TP2+SP, PP2 and CP2; the sources' losses weighted by their tokens average to the loss;
    3 steps of every per-source figure unchanged across those layouts (1e-6)."""
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(runs["student"], dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(runs["teacher"], dtype=torch.float32)
    batches = torch.load(runs["out"] / "kd_first_batch_blend.pt")
    assert any(len(set(s.tolist())) == 2 for b in batches for s in b["sample_sources"]), "a pack mixing sources"
    sums = {0: [0.0, 0.0], 1: [0.0, 0.0]}  # source -> [objective sum, tokens]
    with torch.no_grad():
        for batch in batches:
            per_sample, kd_m, ce_m = [], 0.0, 0.0
            source_of = {int(i): int(s) for ids, srcs in zip(batch["sample_ids"], batch["sample_sources"])
                         for i, s in zip(ids.tolist(), srcs.tolist())}
            for sample, tokens, mask in _sequences([batch]):
                s = student(tokens[None], use_cache=False).logits[0, :-1].float()
                t = teacher(tokens[None], use_cache=False).logits[0, :-1].float()
                log_t, log_s = F.log_softmax(t / T, -1), F.log_softmax(s / T, -1)
                kd = float(((log_t.exp() * (log_t - log_s)).sum(-1) * mask).sum())
                ce = float((F.cross_entropy(s, tokens[1:], reduction="none") * mask).sum())
                per_sample.append((source_of[sample], kd, ce, float(mask.sum())))
                kd_m, ce_m = kd_m + kd, ce_m + ce
            w_kd = 0.5 * ce_m / kd_m  # Megatron-LM's rescaling, per micro-batch
            for source, kd, ce, n in per_sample:
                sums[source][0] += w_kd * kd + ce
                sums[source][1] += n
    ref = runs["blend_tp1"]["steps"]
    for layout in BLENDS:
        first = runs[layout]["steps"][0]
        for index, name in enumerate(("chats", "other")):
            assert rel(first[f"loss/{name}"], sums[index][0] / sums[index][1]) <= 1e-5, (layout, name, first)
            assert first[f"supervised_tokens/{name}"] == sums[index][1], (layout, name)
        mean = sum(first[f"loss/{n}"] * first[f"supervised_tokens/{n}"] for n in ("chats", "other"))
        assert rel(mean / sum(n for _, n in sums.values()), first["loss"]) <= 1e-6, layout
        for step, (g, r) in enumerate(zip(runs[layout]["steps"], ref)):
            assert set(g) == set(r)
            assert all(rel(g[k], r[k]) <= (2e-6 if k == "grad_norm" else 1e-6) for k in r), (layout, step, g, r)
    assert abs(sums[0][0] / sums[0][1] - sums[1][0] / sums[1][1]) > 1e-2, "two sources of different difficulty"
