"""LoRA on Megatron's parallel layers, against independent references: transformers on weights this test
merges itself, peft loading the exported adapter, and the TP=1 run for every other layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import WORKERS, torchrun
from tests.distributed.test_training import rel, write_reversal_data

# the fixture: 3 launches
pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.numerics, pytest.mark.timeout(900)]

RANK, ALPHA = 4, 8.0
EXPORT_FAMILIES = ("qwen3", "llama3", "qwen2", "qwen3_moe")


def random_adapter(model_dir: Path, out: Path) -> dict[str, torch.Tensor]:
    """A PEFT folder with random factors on every attention and MLP projection of the tiny Qwen3.

    q/k/v share one A and gate/up share one A (a Megatron fused layer has one); the B's all differ."""
    from safetensors.torch import save_file

    config = json.loads((model_dir / "config.json").read_text())
    hidden, inter, d = config["hidden_size"], config["intermediate_size"], config["head_dim"]
    q_out, kv_out = config["num_attention_heads"] * d, config["num_key_value_heads"] * d
    gen = torch.Generator().manual_seed(3)

    def rand(*shape):
        return torch.randn(*shape, generator=gen) * 0.2

    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        prefix = f"base_model.model.model.layers.{layer}"
        groups = {"self_attn": ({"q_proj": q_out, "k_proj": kv_out, "v_proj": kv_out}, hidden),
                  "self_attn.o": ({"o_proj": hidden}, q_out),
                  "mlp": ({"gate_proj": inter, "up_proj": inter}, hidden), "mlp.down": ({"down_proj": hidden}, inter)}
        for owner, (outs, fan_in) in groups.items():
            a = rand(RANK, fan_in)
            for name, fan_out in outs.items():
                key = f"{prefix}.{owner.split('.')[0]}.{name}"
                tensors[f"{key}.lora_A.weight"] = a.clone()
                tensors[f"{key}.lora_B.weight"] = rand(fan_out, RANK)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": RANK, "lora_alpha": ALPHA, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}))
    return tensors


@pytest.fixture(scope="module")
def lora_runs(tiny_models, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("lora")
    torch.manual_seed(0)
    torch.save(torch.randint(0, 400, (2, 24)), out / "tokens.pt")
    data = write_reversal_data(out / "data.jsonl", 64, seed=0)
    adapter = random_adapter(tiny_models["qwen3"], out / "random_adapter")
    results = {"out": out, "adapter": adapter}
    for world_size in (4, 2, 1):  # 2 before 1: world size 1 reloads the TP=2 checkpoint
        torchrun(WORKERS / "lora.py", world_size, ["--models", tiny_models["qwen3"].parent, "--data", data,
                                                   "--out", out], timeout=900)
        results.update(json.loads((out / f"lora_ws{world_size}.json").read_text()))
    return results


def _logits(runs: dict, name: str) -> torch.Tensor:
    path = runs["out"] / "logits" / f"{name}.pt"
    assert path.is_file(), f"the worker wrote no logits {name}"
    return torch.load(path)


def _hf_logits(model, runs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.load(runs["out"] / "tokens.pt")).logits.float()


# Tolerances below: 1e-5 where both sides run the same kernels on the same weights (a reload, a TP reshard, the
# random adapters' tiny untrained logits of size ~0.1); 1e-4 for a trained model in transformers/peft vs Megatron
# (two implementations, as test_foundation's TOL); an adapter on the wrong projection or unscaled is > 1e-3.
def _close(ours: torch.Tensor, ref: torch.Tensor, tol: float) -> float:
    vocab = ref.shape[-1]
    diff = (ours[..., :vocab] - ref).abs().max().item()
    assert diff <= tol, f"max |logit difference| {diff:.3g} > {tol}"
    return diff


@pytest.mark.parametrize("tp", [1, 2])
def test_zero_b_leaves_the_base_model_bitwise(lora_runs, tp):
    assert torch.equal(_logits(lora_runs, f"b0_tp{tp}"), _logits(lora_runs, f"base_tp{tp}"))


@pytest.mark.parametrize("tp", [1, 2])
def test_random_adapters_equal_transformers_on_weights_merged_by_the_test(lora_runs, tiny_models, tp):
    """W + (alpha/r) B A for every projection, computed here; q/k/v and gate/up test the fused layouts."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_models["qwen3"], dtype=torch.float32).eval()
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, a in lora_runs["adapter"].items():
            if key.endswith("lora_A.weight"):
                module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
                b = lora_runs["adapter"][key.replace("lora_A", "lora_B")]
                params[f"{module}.weight"].add_(ALPHA / RANK * b @ a)
    ref = _hf_logits(model, lora_runs)
    assert (ref - _hf_logits(AutoModelForCausalLM.from_pretrained(tiny_models["qwen3"]), lora_runs)).abs().max() > 1e-2
    _close(_logits(lora_runs, f"random_tp{tp}"), ref, 1e-5)


@pytest.mark.parametrize("layout,ref", [("tp2", "tp1"), ("tp2_sp", "tp1"), ("pp2", "tp1"), ("dp2", "tp1"),
                                        ("recompute", "tp1"), ("moe_ep2", "moe_tp1"),
                                        ("moe_ep2_dp4", "moe_tp1")])
def test_three_steps_match_tp1(lora_runs, layout, ref):
    got, want = lora_runs[layout], lora_runs[ref]
    assert len(got) == len(want) == 3
    assert want[2]["loss"] < want[0]["loss"], want  # the adapters learn: later steps differ from the first
    for step, (a, b) in enumerate(zip(got, want)):  # reduction order only, as test_training's layouts
        assert rel(a["loss"], b["loss"]) <= 1e-5 and rel(a["grad_norm"], b["grad_norm"]) <= 1e-5, (step, a, b)


@pytest.mark.parametrize("family", EXPORT_FAMILIES)
def test_exported_peft_adapter_gives_the_megatron_logits(lora_runs, tiny_models, family):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    export = lora_runs["out"] / "export" / f"{family}_peft"
    config = json.loads((export / "adapter_config.json").read_text())
    assert config["r"] == RANK and (config["target_parameters"] is not None) == (family == "qwen3_moe")
    base = AutoModelForCausalLM.from_pretrained(tiny_models[family], dtype=torch.float32).eval()
    ours = _logits(lora_runs, f"trained_{family}")
    assert (ours[..., :base.config.vocab_size] - _hf_logits(base, lora_runs)).abs().max() > 1e-3, "no training?"
    model = PeftModel.from_pretrained(base, export).eval()
    _close(ours, _hf_logits(model, lora_runs), 1e-4)


@pytest.mark.parametrize("family", EXPORT_FAMILIES)
def test_merged_export_gives_the_megatron_logits(lora_runs, family):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(lora_runs["out"] / "export" / f"{family}_merged",
                                                 dtype=torch.float32).eval()
    _close(_logits(lora_runs, f"trained_{family}"), _hf_logits(model, lora_runs), 1e-4)


@pytest.mark.parametrize("family", EXPORT_FAMILIES)
def test_lora_load_of_the_exported_adapter_reproduces_the_logits(lora_runs, family):
    _close(_logits(lora_runs, f"lora_load_{family}"), _logits(lora_runs, f"trained_{family}"), 1e-5)


@pytest.mark.parametrize("family", EXPORT_FAMILIES)
def test_training_leaves_the_base_weights_bitwise(lora_runs, family):
    assert lora_runs[f"base_unchanged_{family}"] == 0.0


def test_adapters_saved_at_tp2_reload_at_tp1(lora_runs):
    _close(_logits(lora_runs, "tp2_saved_at_tp1"), _logits(lora_runs, "tp2_saved_at_tp2"), 1e-5)


def test_lora_checkpoint_holds_adapters_and_names_its_base(lora_runs, tiny_models):
    from torch.distributed.checkpoint import FileSystemReader

    ckpt = lora_runs["out"] / "ckpt_tp2" / "iter_0000003"
    record = json.loads((ckpt / "lora.json").read_text())
    assert Path(record["base"]["path"]) == tiny_models["qwen3"].resolve() and len(record["base"]["sha256"]) == 64
    saved = FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata
    model = {k: v for k, v in saved.items() if not k.startswith(("optimizer.", "rng_state"))}
    assert model and all(k.endswith((".lora_A", ".lora_B")) for k in model), sorted(model)[:5]
    # r (in + out) per adapted projection, from the HF config: nothing of the frozen base is saved
    c = json.loads((tiny_models["qwen3"] / "config.json").read_text())
    h, ffn = c["hidden_size"], c["intermediate_size"]
    q, kv = c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    per_layer = RANK * ((h + q + 2 * kv) + (q + h) + (h + 2 * ffn) + (ffn + h))
    assert sum(v.size.numel() for v in model.values()) == per_layer * c["num_hidden_layers"]


def test_resume_five_plus_five_equals_ten_bitwise(lora_runs):
    straight = lora_runs["straight10"]
    split = lora_runs["first5"] + lora_runs["resumed5"]
    assert len(straight) == 10 and split == straight
