"""Does quantization-aware training (or distillation) recover what post-training quantization loses? Measured on
the embedded demo task (reverse a string; exact held-out answers), through the shell scripts a user runs:

    python tools/qat_quality.py [--work DIR] [--formats fp8 int8_sq int4_awq] [--qat-iters 100] [--qad]

1. the fine-tuned demo model ($MLM_WORK_DIR/tiny/sft; made with make_embedded_default.py + finetune.sh if missing)
2. per format: quantize.sh tiny FORMAT (calibrated on the training data) -> generate.sh on the held-out prompts
3. per format: finetune.sh tiny on the quantized checkpoint for --qat-iters steps (QAT) -> generate.sh again
4. the control: the same steps on the unquantized model (what the extra training alone does)
5. with --qad, per format: the same steps on the quantized checkpoint with the fine-tuned model as the teacher
   (finetune.sh with TEACHER_CKPT: quantization-aware distillation, KL to the teacher's distribution)
and prints one table: exact answers of each model and its mean negative log-likelihood of the reference
answers (teacher-forced; finer than exact match, which a small task saturates), all from this one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# --qad: the KD loss alone (Megatron-LM's default), and the LM loss plus the KD loss rescaled to its size
QAD_VARIANTS = {"kd": ("the KD loss alone", "skip_lm_loss: true\n"),
                "lm_kd": ("LM + KD loss", "skip_lm_loss: false\n")}
EXAMPLES = REPO / "examples"


def run(script: str, env: dict, *args: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([str(EXAMPLES / script), "tiny", *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def exact(env: dict, ckpt: Path, out: Path, bf16: bool = False) -> tuple[int, int]:
    """Exact answers of `ckpt` on the held-out prompts (greedy, 8 new tokens), through generate.sh."""
    tiny = Path(env["MLM_WORK_DIR"]) / "tiny"
    run("generate.sh", {**env, "MLM_MODEL_CKPT": str(ckpt), "PROMPTS_PATH": str(tiny / "heldout.jsonl"),
                        "OUTPUT_PATH": str(out), "MLM_EXTRA_ARGS": "--max-new-tokens 8" + (" --bf16" if bf16 else "")})
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return sum(r["completion"].strip() == r["reference"].strip() for r in rows), len(rows)


def answer_nll(ckpt: Path, heldout: Path, bf16: bool = False) -> float:
    """Mean NLL per reference-answer token (end-of-turn included), in a fresh process per checkpoint."""
    proc = subprocess.run([sys.executable, __file__, "--nll", str(ckpt), "--heldout", str(heldout),
                           *(["--bf16"] if bf16 else [])],
                          capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        sys.exit(f"NLL of {ckpt} failed:\n{proc.stderr[-3000:]}")
    return float(proc.stdout.strip().splitlines()[-1])


def _nll_main(ckpt: str, heldout: str, bf16: bool) -> None:
    import torch

    from megatron_sft.arguments import parse_args
    from megatron_sft.data.render import ChatRenderer
    from megatron_sft.inference.logits import forward_logits
    from megatron_sft.loading import build_and_load, load_run_tokenizer
    from megatron_sft.startup import start

    cfg = start(parse_args(["--load", ckpt, "--device", "cpu", *(["--bf16"] if bf16 else [])]))
    chunks, tokenizer = build_and_load(cfg), load_run_tokenizer(cfg)
    renderer = ChatRenderer(tokenizer)
    total, count = 0.0, 0
    for line in Path(heldout).read_text().splitlines():
        messages = json.loads(line)["messages"]
        prompt = renderer.render_text([messages[:-1]], add_generation_prompt=True)[0]
        full = renderer.render_text([messages])[0]
        full = full[: full.rindex(renderer.end_of_turn) + len(renderer.end_of_turn)]  # what training supervises
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        logits = forward_logits(chunks, torch.tensor([ids]))[0, :, : len(tokenizer)].float()
        targets = torch.tensor(ids[start:])
        total += torch.nn.functional.cross_entropy(logits[start - 1 : len(ids) - 1], targets, reduction="sum").item()
        count += len(targets)
    print(total / count)


def print_table(rows: list) -> None:
    """The rows (name, (exact, of), NLL, script time) as one Markdown table."""
    print("\n| model | exact held-out answers | answer NLL (nats/token) | script time |\n|---|---|---|---|")
    for name, (hits, n), nll, seconds in rows:
        print(f"| {name} | {hits}/{n} ({hits / n:.0%}) | {nll:.3g} | {seconds} |")


def main() -> None:
    if "--nll" in sys.argv:
        argv = sys.argv
        _nll_main(argv[argv.index("--nll") + 1], argv[argv.index("--heldout") + 1], "--bf16" in argv)
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=os.environ.get("MLM_WORK_DIR", "/tmp/megatron_workspace"))
    p.add_argument("--formats", nargs="+", default=["fp8", "int8_sq", "int4_awq"])
    p.add_argument("--qat-iters", type=int, default=100)
    p.add_argument("--qat-lr", default="3e-4")
    p.add_argument("--qad", action="store_true", help="also QAD: the QAT steps with the unquantized model as teacher")
    p.add_argument("--sft-iters", type=int, default=None,
                   help="fine-tune the demo model for this many steps (default: conf/tiny.sh's 1000); a shorter run "
                        "leaves smaller margins, where quantization can flip answers")
    cli = p.parse_args()
    env = {**os.environ, "MLM_WORK_DIR": cli.work, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    tiny = Path(cli.work) / "tiny"
    sft = tiny / "sft"
    if not (sft / "latest_checkpointed_iteration.txt").is_file():
        subprocess.run([sys.executable, str(REPO / "tools" / "make_embedded_default.py"), "build", "--out", str(tiny)],
                       check=True, capture_output=True)
        print(f"fine-tuning the demo model into {sft} ...", flush=True)
        iters = {"MLM_DATA_ARGS": f"--train-iters {cli.sft_iters} --split 98,2,0"} if cli.sft_iters else {}
        run("finetune.sh", {**env, "MLM_MODEL_SAVE": str(sft), "MLM_RESUME": "0", **iters})
    heldout = tiny / "heldout.jsonl"
    rows = [("fine-tuned, unquantized (fp32: the CPU run's dtype)", exact(env, sft, tiny / "eval_sft.jsonl"),
             answer_nll(sft, heldout), ""),
            ("fine-tuned, unquantized, run in bf16 (--bf16)", exact(env, sft, tiny / "eval_bf16.jsonl", bf16=True),
             answer_nll(sft, heldout, bf16=True), "")]
    print(*rows, sep="\n", flush=True)
    qat_env = {"MLM_RESUME": "0", "MLM_DATA_ARGS": f"--train-iters {cli.qat_iters} --split 98,2,0",
               "MLM_OPTIM_ARGS": f"--lr {cli.qat_lr} --min-lr 0 --lr-decay-style cosine",
               "MLM_EVAL_ARGS": f"--eval-interval {cli.qat_iters} --eval-iters 2 --save-interval {cli.qat_iters} "
                                "--log-interval 50"}
    control = tiny / "more_steps"
    seconds = run("finetune.sh", {**env, **qat_env, "MLM_MODEL_CKPT": str(sft), "MLM_MODEL_SAVE": str(control)})
    rows.append((f"control: unquantized + the same {cli.qat_iters} steps", exact(env, control, tiny / "eval_more.jsonl"),
                 answer_nll(control, heldout), f"{seconds:.0f} s"))
    print(rows[-1], flush=True)
    for fmt in cli.formats:
        quant, qat = tiny / f"quant_{fmt}", tiny / f"qat_{fmt}"
        seconds = run("quantize.sh", {**env, "MLM_MODEL_CKPT": str(sft), "MLM_QUANT_CKPT": str(quant)}, fmt)
        rows.append((f"PTQ {fmt} (quantize.sh, 512 calibration samples)", exact(env, quant, tiny / f"eval_{fmt}.jsonl"),
                     answer_nll(quant, heldout), f"{seconds:.0f} s"))
        print(rows[-1], flush=True)
        seconds = run("finetune.sh", {**env, **qat_env, "MLM_MODEL_CKPT": str(quant), "MLM_MODEL_SAVE": str(qat)})
        rows.append((f"PTQ {fmt} + QAT {cli.qat_iters} steps (finetune.sh, lr {cli.qat_lr})",
                     exact(env, qat, tiny / f"eval_qat_{fmt}.jsonl"), answer_nll(qat, heldout), f"{seconds:.0f} s"))
        print(rows[-1], flush=True)
        for variant, (label, kd_cfg) in QAD_VARIANTS.items() if cli.qad else ():
            qad, yaml = tiny / f"qad_{fmt}_{variant}", tiny / f"qad_{variant}.yaml"
            yaml.write_text(kd_cfg)
            seconds = run("finetune.sh", {**env, **qat_env, "MLM_MODEL_CKPT": str(quant), "MLM_MODEL_SAVE": str(qad),
                                          "TEACHER_CKPT": str(sft), "KD_CFG": str(yaml)})
            rows.append((f"PTQ {fmt} + QAD {cli.qat_iters} steps (finetune.sh, TEACHER_CKPT: the unquantized model; "
                         f"{label})", exact(env, qad, tiny / f"eval_qad_{fmt}_{variant}.jsonl"),
                         answer_nll(qad, heldout), f"{seconds:.0f} s"))
            print(rows[-1], flush=True)
    print_table(rows)


if __name__ == "__main__":
    main()
