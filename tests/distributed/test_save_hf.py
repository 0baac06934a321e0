"""--save-hf: the Hugging Face directory a run writes beside each checkpoint, at TP=2, PP=2 and EP=2, against
independent references: transformers (and peft) loading it, the checkpoint's own logits reloaded at TP=1 by
dist_checkpointing, and the files nvidia-modelopt's Megatron exporter writes from the same checkpoint; and the
files convert.py (convert.sh's function: the same writer, at TP=1) writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tests.conftest import WORKERS, checkpoint_entries, torchrun
from tests.distributed.test_training import write_reversal_data
from tests.distributed.workers.save_hf import runs

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.numerics, pytest.mark.timeout(900)]
RUNS = runs()
ITER = "iter_0000003"


@pytest.fixture(scope="module")
def out(tiny_models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("save_hf")
    torch.manual_seed(0)
    torch.save(torch.randint(0, 400, (2, 24)), out / "tokens.pt")
    data = write_reversal_data(out / "data.jsonl", 64, seed=0)
    for world_size in (2, 1):  # 1 reads what 2 saved
        torchrun(WORKERS / "save_hf.py", world_size, ["--models", tiny_models["qwen3"].parent, "--data", data,
                                                      "--out", out], timeout=900)
    return out


def _hf_logits(model, out: Path) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.load(out / "tokens.pt")).logits.float()


def _checkpoint_logits(out: Path, name: str, vocab: int) -> torch.Tensor:
    return torch.load(out / "logits" / f"{name}.pt")[..., :vocab]


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    found = {}
    for path in sorted(directory.glob("*.safetensors")):
        found.update(load_file(path))
    assert found, f"no safetensors in {directory}"
    return found


FULL = [n for n in RUNS if not n.startswith("lora")]


@pytest.mark.parametrize("name", FULL)
def test_hf_directory_gives_the_checkpoint_logits(out, tiny_models, name):
    from transformers import AutoModelForCausalLM

    hf = out / "ckpt" / name / ITER / "hf"
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    ref = _checkpoint_logits(out, name, model.config.vocab_size)
    untrained = _hf_logits(AutoModelForCausalLM.from_pretrained(tiny_models[RUNS[name][0]], dtype=torch.float32), out)
    assert (ref - untrained).abs().max() > 1e-3, "3 steps changed nothing: the test could not tell"
    got = _hf_logits(model, out)
    if name.startswith("bf16"):  # the weights are rounded to bf16 on export: parity.json's bound, relative RMS
        rel = ((got - ref).norm() / ref.norm()).item()
        assert rel <= 5e-2, f"{name}: relative RMS logit error {rel:.3g} > 5e-2"
        return
    diff = (got - ref).abs().max().item()
    # transformers on the exported fp32 tensors vs Megatron on the checkpoint: two implementations, rounding only
    # (test_foundation's TOL); a tensor exported in the wrong layout or from the wrong step is > 1e-3 (above)
    assert diff <= 1e-4, f"{name}: max |logit difference| {diff:.3g} > 1e-4"


@pytest.mark.parametrize("writer", ["modelopt", "convert"])
@pytest.mark.parametrize("name", FULL)
def test_hf_tensors_are_bitwise_those_modelopt_and_convert_write(out, name, writer):
    ours, theirs = _tensors(out / "ckpt" / name / ITER / "hf"), _tensors(out / writer / name)
    assert ours.keys() == theirs.keys(), sorted(set(ours) ^ set(theirs))[:6]
    for key, t in theirs.items():
        assert ours[key].dtype == t.dtype and torch.equal(ours[key], t), key
    want = torch.bfloat16 if name.startswith("bf16") else torch.float32
    assert {t.dtype for t in ours.values()} == {want}


@pytest.mark.parametrize("name", FULL)
def test_hf_directory_is_complete_and_checked(out, name):
    hf = out / "ckpt" / name / ITER / "hf"
    for file in ("config.json", "generation_config.json", "tokenizer_config.json", "parity.json", "manifest.json"):
        assert (hf / file).is_file(), file
    umask = os.umask(0)
    os.umask(umask)
    modes = {oct(p.stat().st_mode & 0o777) for p in hf.glob("*.safetensors")}
    assert modes == {oct(0o666 & ~umask)}, f"safetensors modes {modes}: other users could not read them"
    parity = json.loads((hf / "parity.json").read_text())["model"]
    assert parity["ok"] and parity["value"] <= parity["bound"]
    assert not list((out / "ckpt" / name / ITER).glob(".hf*")), "a staging directory was left behind"


def test_periodic_save_gets_its_own_hf_directory(out):
    """qwen3_tp2 saves at iteration 2 (--save-interval 2) and at the end: both have hf/, with different weights."""
    ckpt = out / "ckpt" / "qwen3_tp2"
    first, last = _tensors(ckpt / "iter_0000002" / "hf"), _tensors(ckpt / ITER / "hf")
    assert any(not torch.equal(first[k], last[k]) for k in last)


def test_save_hf_final_writes_the_last_checkpoint_only(out):
    """llama3_pp2 runs with --save-hf final --save-interval 2: iteration 2 is saved without hf/, 3 with it."""
    ckpt = out / "ckpt" / "llama3_pp2"
    assert (ckpt / "iter_0000002" / "manifest.json").is_file() and not (ckpt / "iter_0000002" / "hf").exists()
    assert (ckpt / ITER / "hf" / "parity.json").is_file()


@pytest.mark.parametrize("name", ["lora_tp2", "lora_pp2"])
def test_lora_adapter_loads_with_peft_and_gives_the_checkpoint_logits(out, tiny_models, name):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    hf = out / "ckpt" / name / ITER / "hf"
    assert (hf / "adapter_config.json").is_file() and (hf / "adapter_model.safetensors").is_file()
    base = AutoModelForCausalLM.from_pretrained(tiny_models["qwen3"], dtype=torch.float32)
    ref = _checkpoint_logits(out, name, base.config.vocab_size)
    assert (ref - _hf_logits(base, out)).abs().max() > 1e-3, "the adapters did not train: the test could not tell"
    diff = (_hf_logits(PeftModel.from_pretrained(base, hf), out) - ref).abs().max().item()
    assert diff <= 1e-4, f"{name}: max |logit difference| {diff:.3g}"


@pytest.mark.parametrize("name", ["lora_tp2", "lora_pp2"])
def test_lora_merged_model_loads_and_equals_convert_merge_lora(out, name):
    """Also: the merge leaves the live model alone (lora_pp2: TP 1 per stage, where a merge into the tensor
    full_tensor returns would write into the training weights; the merged export's parity check, which runs the
    live model, then fails the run, as it did before the copy was added)."""
    from transformers import AutoModelForCausalLM

    merged = out / "ckpt" / name / ITER / "hf" / "merged"
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    diff = (_hf_logits(model, out) - _checkpoint_logits(out, name, model.config.vocab_size)).abs().max()
    assert diff <= 1e-4, diff
    ours, theirs = _tensors(merged), _tensors(out / "convert" / name)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_failed_parity_stops_the_run_and_keeps_the_checkpoint(out):
    """The rejected export (the worker's first run), then the same command again: the hf/ it lacked is written,
    the rejected copy goes, the checkpoint is not retrained."""
    message = (out / "rejected.txt").read_text()
    ckpt = out / "ckpt" / "rejected"
    assert "does not reproduce the model's logits" in message and "\n" not in message, message
    assert str(ckpt / ITER / "hf.rejected") in message and "intact" in message
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "3"  # the checkpoint stands
    assert not (ckpt / "iter_0000004").exists()
    assert json.loads((ckpt / ITER / "hf" / "parity.json").read_text())["model"]["ok"] is True
    assert not (ckpt / ITER / "hf.rejected").exists() and not list((ckpt / ITER).glob(".hf*"))


def test_exporting_does_not_change_the_training(out):
    """A LoRA run at PP2 exporting (adapter and merged model, with their parity forwards) after every step trains
    exactly as the same run without saves: same loss and grad norm at each step."""
    runs = json.loads((out / "unperturbed.json").read_text())
    assert len(runs["exported"]) == 3 and runs["exported"] == runs["plain"], runs
    assert all((out / "ckpt" / "every_step" / f"iter_000000{i}" / "hf" / "merged").is_dir() for i in (1, 2, 3))


@pytest.mark.parametrize(("name", "iteration", "lora", "save_hf"), [
    ("qwen3_tp2", ITER, False, True), ("llama3_pp2", "iter_0000002", False, False), ("lora_tp2", ITER, True, True)])
def test_a_save_writes_what_the_layout_module_lists(out, name, iteration, lora, save_hf):
    """Full and LoRA training checkpoints, with and without --save-hf: the files on disk are names.py's list."""
    from megatron_sft.checkpointing.names import checkpoint_entries as listed

    assert checkpoint_entries(out / "ckpt" / name / iteration) == listed(training=True, lora=lora, save_hf=save_hf)
