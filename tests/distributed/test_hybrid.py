"""The Nemotron-H hybrid (Mamba-2, attention, MLP, MoE layers) as Megatron-Core's MambaModel against transformers'
NemotronHForCausalLM, at several layouts (gloo, CPU).

Tiny models of transformers' own class, fp32: "M*M-" (dense) and "M*ME" (MoE), 8 Mamba heads in 2 groups, scan
chunks of 16 and samples of 24 tokens (longer than a chunk and not a multiple of it). One torchrun launch per world
size runs every layout; the reference logits come from transformers in this process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import WORKERS, torchrun
from tests.distributed.test_training import rel, write_reversal_data

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.numerics, pytest.mark.timeout(900)]

FAMILIES = ("nemotron_h", "nemotron_h_moe")
# fp32 logits (~0.7) of two implementations of the scan (chunked here, chunked differently there): a few 1e-5
# apart; a wrong block order, head split or a state crossing a boundary is > 1e-2.
TOL = 1e-4


@pytest.fixture(scope="module")
def runs(tiny_models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hybrid")
    torch.manual_seed(0)
    torch.save(torch.randint(0, 400, (2, 24)), out / "tokens.pt")
    models_root = tiny_models["nemotron_h"].parent
    data = write_reversal_data(out / "data.jsonl", 64, seed=0)
    for world_size in (1, 2):
        torchrun(WORKERS / "hybrid.py", world_size, ["--models", models_root, "--out", out, "--data", data],
                 timeout=600)
    return out


def as_its_kernels(model):
    """transformers' NemotronH on the CPU (its PyTorch path) computing what its CUDA kernels do: that path clamps dt
    at time_step_min, the kernels (and Megatron's) apply only time_step_limit (0, inf). Written here, not taken from
    the code under test. Other models are returned as they are."""
    for module in model.modules():
        if type(module).__name__ == "NemotronHMamba2Mixer":
            module.time_step_min = 0.0
    return model


def transformers_logits(model_dir: Path, tokens: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = as_its_kernels(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval())
    with torch.no_grad():  # its cache fails on MLP layers in transformers 5.14.1 (KeyError 'mlp')
        return model(tokens, use_cache=False).logits.float()


@pytest.fixture(scope="module")
def reference_logits(tiny_models, runs) -> dict[str, torch.Tensor]:
    tokens = torch.load(runs / "tokens.pt")
    return {family: transformers_logits(tiny_models[family], tokens) for family in FAMILIES}


def _max_diff(runs: Path, ref: torch.Tensor, family: str, layout: str) -> float:
    path = runs / "logits" / f"{family}__{layout}.pt"
    assert path.is_file(), f"worker wrote no logits for {family} at {layout}"
    ours = torch.load(path)
    return (ours[..., : ref.shape[-1]] - ref).abs().max().item()


@pytest.mark.parametrize("layout", ["tp1", "tp2", "tp2_sp", "pp2", "cp2", "tp1_from_tp2"])
@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(runs, reference_logits, family, layout):
    assert _max_diff(runs, reference_logits[family], family, layout) <= TOL


def test_moe_logits_match_transformers_at_ep2(runs, reference_logits):
    assert _max_diff(runs, reference_logits["nemotron_h_moe"], "nemotron_h_moe", "ep2") <= TOL


def test_reference_can_tell_models_apart(reference_logits):
    """The bound means something: the two tiny models' logits differ far beyond it."""
    assert (reference_logits["nemotron_h"] - reference_logits["nemotron_h_moe"]).abs().max().item() > 100 * TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_samples_equal_each_sample_alone(runs, family):
    """Boundaries at 5 and 27 fall inside scan chunks of 16: no state or convolution window crosses them."""
    result = torch.load(runs / f"packing_{family}.pt")
    cu = [0, 5, 27, 40]
    for (a, b), alone in zip(zip(cu[:-1], cu[1:]), result["alone"]):
        assert (result["packed"][0, a:b] - alone[0]).abs().max().item() <= 1e-5, (family, a, b)
    second = slice(5, 27)  # the check can fail: one segment lets the first sample's state into the second
    assert (result["one_segment"][0, second] - result["packed"][0, second]).abs().max().item() > 1e-3


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update(load_file(f))
    return out


# transformers 5.14.1 saves the embedding as backbone.embedding.weight; the Hub's files and modelopt's table (which
# the export follows) call it backbone.embeddings.weight, and transformers loads either.
RENAMED = {"backbone.embedding.weight": "backbone.embeddings.weight"}


@pytest.mark.parametrize("family", FAMILIES)
def test_hf_roundtrip_is_exact_and_loads(runs, tiny_models, family):
    """HF -> Megatron at TP=2 -> checkpoint -> HF from PP=2: every tensor bitwise, and transformers loads it."""
    exported_dir = runs / "export" / family
    original = {RENAMED.get(k, k): v for k, v in _tensors(tiny_models[family]).items()}
    exported = _tensors(exported_dir)
    assert set(exported) == set(original), (sorted(set(original) - set(exported)),
                                            sorted(set(exported) - set(original)))
    for name, tensor in original.items():
        assert exported[name].dtype == tensor.dtype, name
        assert torch.equal(exported[name], tensor), f"{name} differs after HF -> Megatron(TP=2) -> HF"
    tokens = torch.load(runs / "tokens.pt")
    assert torch.equal(transformers_logits(exported_dir, tokens), transformers_logits(tiny_models[family], tokens))


@pytest.fixture(scope="module")
def training(runs) -> dict:
    return {**json.loads((runs / "train_ws1.json").read_text()), **json.loads((runs / "train_ws2.json").read_text())}


# Loss and grad norm of 3 steps: the same arithmetic in another order (TP partial sums, the CP exchange of heads,
# PP/DP reductions): fp32 rounding, ~1e-7 relative per reduction; a token counted twice, a state crossing a sample,
# a gradient not reduced over TP is > 1e-3.
@pytest.mark.parametrize("layout", ["train_tp2", "train_tp2_sp", "train_pp2", "train_dp2", "train_cp2"])
def test_three_steps_do_not_depend_on_layout(training, layout):
    ref, got = training["train_tp1"], training[layout]
    assert len(got) == len(ref) == 3
    for step, (g, r) in enumerate(zip(got, ref)):
        assert rel(g["loss"], r["loss"]) <= 1e-6 and rel(g["grad_norm"], r["grad_norm"]) <= 1e-6, (layout, step, g, r)


@pytest.mark.parametrize("layout", ["train_moe_ep2", "train_moe_tp2_sp"])
def test_moe_three_steps_do_not_depend_on_layout(training, layout):
    ref, got = training["train_moe_tp1"], training[layout]
    for step, (g, r) in enumerate(zip(got, ref)):
        assert rel(g["loss"], r["loss"]) <= 1e-6 and rel(g["grad_norm"], r["grad_norm"]) <= 1e-6, (layout, step, g, r)


def test_training_learns(training):
    losses = [r["loss"] for r in training["straight6"]]
    assert losses[-1] < losses[0], losses


def test_resume_is_exact(training):
    """6 straight steps = 3, a checkpoint, 3 resumed: bitwise."""
    assert training["first3"] + training["resumed3"] == training["straight6"]


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_adapter_loads_in_peft_with_the_checkpoint_logits(runs, tiny_models, family):
    """A LoRA run at TP=2+SP on the default hybrid targets (attention, MLP or experts, in_proj): its PEFT adapter on
    transformers' NemotronH, and its merged model, give the checkpoint's logits (1e-4)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    hf = runs / "lora" / family / "iter_0000003" / "hf"
    config = json.loads((hf / "adapter_config.json").read_text())
    assert "in_proj" in config["target_modules"] and "q_proj" in config["target_modules"]
    if family.endswith("_moe"):
        assert sorted(config["target_parameters"]) == ["mixer.experts.down_proj", "mixer.experts.up_proj"]
    ours, tokens = torch.load(runs / "logits" / f"lora_{family}.pt"), torch.load(runs / "tokens.pt")
    base = as_its_kernels(AutoModelForCausalLM.from_pretrained(tiny_models[family], dtype=torch.float32))
    with torch.no_grad():
        before = base(tokens, use_cache=False).logits
        adapted = PeftModel.from_pretrained(base, hf).eval()(tokens, use_cache=False).logits
    assert (ours[..., : adapted.shape[-1]] - before).abs().max().item() > 1e-2, "training left the adapters at zero"
    assert (ours[..., : adapted.shape[-1]] - adapted).abs().max().item() <= TOL
    assert (transformers_logits(hf / "merged", tokens) - adapted).abs().max().item() <= TOL
