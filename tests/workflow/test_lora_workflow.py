"""LoRA through the shell workflow on the embedded default: PEFT=lora finetune.sh, then generate.sh, mmlu.sh
and convert.sh on the LoRA run as they are, checked against transformers + peft on the exported adapter.

One chain of launches: build, finetune.sh PEFT=lora (1 process), a second call that resumes it, generate.sh,
convert.sh (adapter, then MERGE_LORA=1), mmlu.sh, and last generate.sh after the base model was changed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.workflow.helpers import build_embedded_default, REPO, run_script, script_env

pytestmark = [pytest.mark.slow, pytest.mark.distributed, pytest.mark.timeout(900)]

ITERS = 6


@pytest.fixture(scope="module")
def lora(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("lora_workflow")
    build_embedded_default(work)
    save = work / "lora_sft"
    common = dict(PEFT="lora", MLM_MODEL_SAVE=str(save), MLM_EVAL_ARGS="--eval-iters 0 --log-interval 1")
    first = run_script("finetune", "tiny", script_env(work, MLM_DATA_ARGS=f"--train-iters {ITERS // 2}", **common))
    second = run_script("finetune", "tiny", script_env(work, MLM_DATA_ARGS=f"--train-iters {ITERS}", **common))
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join((work / "tiny" / "heldout.jsonl").read_text().splitlines(keepends=True)[:6]))
    generated = work / "generated.jsonl"
    generate = run_script("generate", "tiny", script_env(
        work, MLM_MODEL_CKPT=str(save), PROMPTS_PATH=str(prompts), OUTPUT_PATH=str(generated),
        MLM_EXTRA_ARGS="--max-new-tokens 6"))
    for name, extra in (("adapter", {}), ("merged", {"MERGE_LORA": "1"})):
        run_script("convert", "tiny", script_env(work, MLM_MODEL_CKPT=str(save), EXPORT_DIR=str(work / name),
                                                 EXPORT_DTYPE="fp32", **extra))
    return {"work": work, "save": save, "first": first, "second": second, "generate": generate,
            "generated": [json.loads(line) for line in generated.read_text().splitlines()]}


def test_finetune_trains_adapters_only_and_resumes(lora):
    out = lora["first"].stdout + lora["first"].stderr
    assert "PEFT" in out and "LoRA r=32 alpha=64 on 8 linear layers" in out, out[-3000:]
    assert "trainable parameters of" in out
    resumed = lora["second"].stdout + lora["second"].stderr
    assert f"resuming {lora['save']} from iteration {ITERS // 2}" in resumed
    ckpt = lora["save"] / f"iter_{ITERS:07d}"
    record = json.loads((ckpt / "lora.json").read_text())
    assert record["rank"] == 32 and Path(record["base"]["path"]) == (lora["work"] / "tiny" / "hf").resolve()
    assert json.loads((ckpt / "train_state.json").read_text())["iteration"] == ITERS


def _greedy(model, tokenizer, record) -> list[int]:
    import torch

    ids = torch.tensor([record["prompt_ids"]])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=6, do_sample=False)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("export", ["adapter", "merged"])
def test_generate_on_the_lora_run_answers_like_transformers_on_the_export(lora, export):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = lora["work"] / "tiny" / "hf"
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if export == "adapter":
        from peft import PeftModel

        assert json.loads((lora["work"] / "adapter" / "adapter_config.json").read_text())["r"] == 32
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        model = PeftModel.from_pretrained(base, lora["work"] / "adapter").eval()
    else:
        model = AutoModelForCausalLM.from_pretrained(lora["work"] / "merged", dtype=torch.float32).eval()
    assert len(lora["generated"]) == 6
    for record in lora["generated"]:
        got = _greedy(model, tokenizer, record)
        assert got[: len(record["tokens"])] == record["tokens"], (export, record)


def test_mmlu_runs_on_the_lora_run(lora):
    results = lora["work"] / "mmlu.json"
    env = script_env(lora["work"], MLM_MODEL_CKPT=str(lora["save"]), MMLU_DATASET=str(REPO / "tests" / "data" /
                     "mmlu_fixture"), MLM_EXTRA_ARGS=f"--seq-length 256 --results {results}")
    run_script("mmlu", "tiny", env)
    assert json.loads(results.read_text())["overall"]["total"] == 16


def test_a_changed_base_model_is_refused_in_one_line(lora):
    weights = lora["work"] / "tiny" / "hf" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")  # last weight bytes changed
    proc = run_script("generate", "tiny", script_env(lora["work"], MLM_MODEL_CKPT=str(lora["save"]),
                      PROMPTS_PATH=str(lora["work"] / "prompts.jsonl")), check=False)
    lines = [line for line in proc.stderr.splitlines() if "changed since training" in line]
    assert proc.returncode == 2 and len(lines) == 1 and "lora.json" in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
