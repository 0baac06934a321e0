"""Quantization through the shell workflow on the embedded default, as a user runs it: quantize.sh tiny, finetune.sh
tiny on its output (QAT), export.sh tiny, generate.sh and mmlu.sh tiny on the quantized checkpoint; and the
refusals, each one line with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.workflow.helpers import build_embedded_default, EXAMPLES, REPO, run_script, script_env

pytestmark = [pytest.mark.slow, pytest.mark.distributed, pytest.mark.timeout(900)]
QAT_ITERS = 3


@pytest.fixture(scope="module")
def flow(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("quantize_workflow")
    build_embedded_default(work)
    env = dict(CALIB_SIZE="16")
    quantize = run_script("quantize", "tiny", script_env(work, **env))  # HF_MODEL_CKPT from conf/tiny.sh, fp8
    quant = work / "tiny_quant"
    qat = work / "tiny_qat"
    finetune = run_script("finetune", "tiny", script_env(
        work, MLM_MODEL_CKPT=str(quant), MLM_MODEL_SAVE=str(qat), MLM_DATA_ARGS=f"--train-iters {QAT_ITERS}",
        MLM_EVAL_ARGS="--eval-iters 0 --log-interval 1"))
    export = run_script("export", "tiny", script_env(work, MLM_MODEL_CKPT=str(qat)))
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join((work / "tiny" / "heldout.jsonl").read_text().splitlines(keepends=True)[:4]))
    generated = work / "generated.jsonl"
    generate = run_script("generate", "tiny", script_env(
        work, MLM_MODEL_CKPT=str(quant), PROMPTS_PATH=str(prompts), OUTPUT_PATH=str(generated),
        MLM_EXTRA_ARGS="--max-new-tokens 6"))
    return {"work": work, "quant": quant, "qat": qat, "quantize": quantize, "finetune": finetune, "export": export,
            "generate": generate, "generated": generated}


def _out(proc) -> str:
    return proc.stdout + proc.stderr


def test_quantize_sh_writes_a_quantized_checkpoint(flow):
    out = _out(flow["quantize"])
    assert "QUANT_CFG       fp8  (default)" in out, out[-3000:]
    assert "calibrated on 16 samples" in out
    release = flow["quant"] / "release"
    assert (release / "modelopt_state").is_dir() and (release / "hf_assets" / "tokenizer.json").is_file()
    record = json.loads((release / "quantization.json").read_text())
    assert record["format"] == "fp8" and record["calibration"]["samples"] == 16


def test_finetune_sh_on_it_trains_through_the_quantizers(flow):
    out = _out(flow["finetune"])
    assert "is quantized (fp8): the model runs fake-quantized" in out, out[-3000:]
    last = flow["qat"] / f"iter_{QAT_ITERS:07d}"
    assert (last / "modelopt_state").is_dir()
    assert json.loads((last / "quantization.json").read_text())["format"] == "fp8"


def _read_export(export, algo: str) -> dict:
    """export.sh's directory: both configs name the format `algo`, the tokenizer is there; its tensors."""
    from safetensors.torch import load_file

    assert json.loads((export / "hf_quant_config.json").read_text())["quantization"]["quant_algo"] == algo
    assert json.loads((export / "config.json").read_text())["quantization_config"]["quant_algo"] == algo
    assert (export / "tokenizer.json").is_file()
    tensors = {}
    for path in export.glob("*.safetensors"):
        tensors.update(load_file(path))
    return tensors


def test_export_sh_writes_modelopt_fp8_format(flow):
    import torch

    tensors = _read_export(flow["work"] / "tiny_export", "FP8")
    fp8 = [k for k, v in tensors.items() if v.dtype == torch.float8_e4m3fn]
    assert len(fp8) == 2 * 7, fp8  # every linear of the 2 layers; the embeddings and norms stay unquantized


def test_generate_and_mmlu_run_the_quantized_checkpoint(flow):
    assert "is quantized (fp8)" in _out(flow["generate"])
    rows = [json.loads(line) for line in flow["generated"].read_text().splitlines()]
    assert len(rows) == 4 and all(r["tokens"] for r in rows)
    results = flow["work"] / "mmlu.json"
    mmlu = run_script("mmlu", "tiny", script_env(flow["work"], MLM_MODEL_CKPT=str(flow["quant"]),
                                                 MMLU_DATASET=str(REPO / "tests" / "data" / "mmlu_fixture"),
                                                 MLM_EXTRA_ARGS=f"--seq-length 256 --results {results}"))
    assert "is quantized (fp8)" in _out(mmlu)
    assert json.loads(results.read_text())["overall"]["total"] == 16


def _refused(proc, *words: str) -> None:
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert proc.returncode == 2 and len(errors) == 1, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert all(w in errors[0] for w in words), errors[0]


def test_cuda_only_format_is_refused_before_any_model(flow):
    proc = subprocess.run(["bash", str(EXAMPLES / "quantize.sh"), "tiny", "nvfp4"], capture_output=True, text=True,
                          env=script_env(flow["work"]), timeout=120)
    _refused(proc, "QUANT_CFG=nvfp4", "CUDA")
    proc = subprocess.run([sys.executable, str(EXAMPLES / "quantize.py"), "--load", str(flow["work"] / "tiny" / "hf"),
                           "--save", str(flow["work"] / "never"), "--export-quant-cfg", "mxfp8", "--device", "cpu"],
                          capture_output=True, text=True, env=script_env(flow["work"]), timeout=120)
    _refused(proc, "--export-quant-cfg mxfp8", "CUDA")
    assert "imported" not in proc.stdout + proc.stderr  # no model was loaded
    assert not (flow["work"] / "never" / "latest_checkpointed_iteration.txt").exists()


def test_lora_and_save_hf_on_a_quantized_model_are_refused(flow):
    common = dict(MLM_MODEL_CKPT=str(flow["quant"]), MLM_DATA_ARGS="--train-iters 1")
    proc = run_script("finetune", "tiny", script_env(flow["work"], PEFT="lora", MLM_MODEL_SAVE=str(flow["work"] / "l"),
                                                     **common), check=False)
    _refused(proc, "quantized", "LoRA")
    proc = run_script("finetune", "tiny", script_env(flow["work"], SAVE_HF="1", MLM_MODEL_SAVE=str(flow["work"] / "h"),
                                                     **common), check=False)
    _refused(proc, "--save-hf", "export.sh")


def test_export_sh_writes_int4_awq_and_refuses_it_across_pipeline_stages(flow):
    import torch

    int4 = flow["work"] / "tiny_int4_awq"
    run_script("quantize", "tiny", script_env(flow["work"], QUANT_CFG="int4_awq", CALIB_SIZE="4",
                                              MLM_QUANT_CKPT=str(int4)))
    proc = run_script("export", "tiny", script_env(flow["work"], MLM_MODEL_CKPT=str(int4),
                                                   EXPORT_DIR=str(flow["work"] / "int4_export"), PP="2"), check=False)
    _refused(proc, "INT4_AWQ_CFG", "PP=1")
    export = flow["work"] / "int4_export"
    run_script("export", "tiny", script_env(flow["work"], MLM_MODEL_CKPT=str(int4), EXPORT_DIR=str(export)))
    tensors = _read_export(export, "W4A16_AWQ")
    assert json.loads((export / "hf_quant_config.json").read_text())["quantization"]["group_size"] == 128
    packed = [k for k, v in tensors.items() if v.dtype == torch.uint8]
    assert len(packed) == 2 * 7, packed  # every linear of the 2 layers, two INT4 codes a byte


def test_sft_api_trains_the_quantized_checkpoint(flow):
    from megatron_sft import sft

    save = flow["work"] / "sft_qat"
    result = sft(model_path=str(flow["quant"]), data_path=f"{flow['work'] / 'tiny' / 'train.jsonl'}:24",
                 ckpt_output_dir=str(save), effective_batch_size=8, learning_rate=1e-3, max_seq_len=128,
                 data_cache_dir=str(flow["work"] / "data_cache"), quiet=True)
    last = save / f"iter_{result.iterations:07d}"
    assert result.iterations >= 1 and (last / "modelopt_state").is_dir()
    assert "is quantized (fp8)" in (save / "training.log").read_text()
