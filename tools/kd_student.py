"""Does distillation train a smaller student better than the labels alone? Measured on the embedded demo task
(reverse a string; exact held-out answers), through the shell scripts a user runs:

    python tools/kd_student.py [--work DIR] [--iters 300] [--lr 1e-3] [--temperatures 1 2]

1. the teacher: the fine-tuned demo model ($MLM_WORK_DIR/tiny/sft; made with make_embedded_default.py + finetune.sh
   if missing), exported to Hugging Face by convert.sh
2. the student: the teacher with every other layer dropped (half the layers; its weights, renumbered), a Hugging Face
   directory
3. finetune.sh tiny from the student for --iters steps on the labels alone, and the same with TEACHER_CKPT=the
   teacher (KD: KL to the teacher's distribution on the same assistant tokens), once per --temperatures value
   (KD_CFG's logit_kl_temperature); same data order, same steps
and prints one table: exact answers and the mean negative log-likelihood of the reference answers of each model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from qat_quality import REPO, answer_nll, exact, print_table, run  # the sibling tool (this script's directory is on the path)


def half_depth(hf: Path, out: Path) -> Path:
    """`hf` with layers 0, 2, 4, ... kept (renumbered 0, 1, 2, ...): a student of half the depth."""
    from safetensors.torch import load_file, save_file

    config = json.loads((hf / "config.json").read_text())
    kept = list(range(0, config["num_hidden_layers"], 2))
    config["num_hidden_layers"] = len(kept)
    if "layer_types" in config:
        config["layer_types"] = [config["layer_types"][i] for i in kept]
    tensors = {}
    for file in sorted(hf.glob("*.safetensors")):
        for name, t in load_file(file).items():
            if ".layers." not in name:
                tensors[name] = t
                continue
            head, rest = name.split(".layers.", 1)
            index, tail = rest.split(".", 1)
            if int(index) in kept:
                tensors[f"{head}.layers.{kept.index(int(index))}.{tail}"] = t
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    skipped = ("config.json", "manifest.json", "parity.json")  # the teacher's, not the student's
    for file in hf.iterdir():  # tokenizer and generation config
        if file.suffix in (".json", ".jinja", ".txt", ".model") and "safetensors" not in file.name \
                and file.name not in skipped:
            shutil.copy(file, out / file.name)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=os.environ.get("MLM_WORK_DIR", "/tmp/megatron_workspace"))
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--lr", default="1e-3")
    p.add_argument("--temperatures", nargs="+", default=["1", "2"])
    cli = p.parse_args()
    env = {**os.environ, "MLM_WORK_DIR": cli.work, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    tiny = Path(cli.work) / "tiny"
    sft, heldout = tiny / "sft", tiny / "heldout.jsonl"
    if not (sft / "latest_checkpointed_iteration.txt").is_file():
        subprocess.run([sys.executable, str(REPO / "tools" / "make_embedded_default.py"), "build", "--out", str(tiny)],
                       check=True, capture_output=True)
        print(f"fine-tuning the demo model into {sft} ...", flush=True)
        run("finetune.sh", {**env, "MLM_MODEL_SAVE": str(sft), "MLM_RESUME": "0"})
    teacher_hf = tiny / "kd_teacher_hf"
    if not (teacher_hf / "config.json").is_file():
        run("convert.sh", {**env, "MLM_MODEL_CKPT": str(sft), "EXPORT_DIR": str(teacher_hf)})
    student = half_depth(teacher_hf, tiny / "kd_student_init")
    layers = json.loads((student / "config.json").read_text())["num_hidden_layers"]
    rows = [("teacher: the demo model", exact(env, sft, tiny / "eval_teacher.jsonl"), answer_nll(sft, heldout), ""),
            (f"student: every other layer of it ({layers} layers), untrained",
             exact(env, student, tiny / "eval_student.jsonl"), answer_nll(student, heldout), "")]
    print(*rows, sep="\n", flush=True)
    steps = {"MLM_RESUME": "0", "MLM_DATA_ARGS": f"--train-iters {cli.iters} --split 98,2,0",
             "MLM_OPTIM_ARGS": f"--lr {cli.lr} --min-lr 0 --lr-decay-style cosine --lr-warmup-fraction 0.05 "
                               "--weight-decay 0.0 --adam-beta2 0.98",
             "MLM_EVAL_ARGS": f"--eval-interval {cli.iters} --eval-iters 2 --save-interval {cli.iters} --log-interval 50"}
    runs = [("labels", {}, "on the labels alone")]
    for t in cli.temperatures:
        yaml = tiny / f"kd_t{t}.yaml"
        yaml.write_text(f"logit_kl_temperature: {t}\n")
        runs.append((f"kd_t{t}", {"TEACHER_CKPT": str(sft), "KD_CFG": str(yaml)},
                     f"distilled from the teacher (TEACHER_CKPT), temperature {t}"))
    for name, extra, label in runs:
        save = tiny / f"student_{name}"
        seconds = run("finetune.sh", {**env, **steps, **extra, "HF_MODEL_CKPT": str(student),
                                      "MLM_MODEL_SAVE": str(save)})
        rows.append((f"student + {cli.iters} steps {label}, lr {cli.lr}", exact(env, save, tiny / f"eval_{name}.jsonl"),
                     answer_nll(save, heldout), f"{seconds:.0f} s"))
        print(rows[-1], flush=True)
    print_table(rows)


if __name__ == "__main__":
    main()
