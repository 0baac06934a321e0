"""Distillation runs (finetune with --export-kd-teacher-load), several per launch (one launch per world size).

    torchrun --nproc_per_node=N kd.py --student DIR --teacher DIR --moe-student DIR --moe-teacher DIR --data FILE \
        --out DIR

Rank 0 writes OUT/kd_ws<N>.json: per named run, every step's loss, grad norm, kd_loss and lm_loss, and the teacher's
state after training; at world size 1 also the first global batch (OUT/kd_first_batch.pt; _moe.pt: the MoE run's) and the step's gradients
under Hugging Face's names (OUT/kd_grads_<run>.pt), for the test to recompute with transformers.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
from pathlib import Path

# name -> (world size, flags, KD YAML: the test writes YAML[key] to OUT/kd_<key>.yaml); T2: temperature 2, KD alone; MIX: LM + 0.5 x KD rescaled, temperature 2
LAYOUTS = {
    "tp1": (1, "", "T2"),
    "mix_tp1": (1, "", "MIX"),
    "mix_full_logits": (1, "--lm-head-chunk-size 0", "MIX"),
    "full_logits": (1, "--lm-head-chunk-size 0", "T2"),
    "moe_tp1": (1, "MOE", "T2"),
    "tp2": (2, "--tensor-model-parallel-size 2", "T2"),
    "tp2_sp": (2, "--tensor-model-parallel-size 2 --sequence-parallel", "T2"),
    "pp2": (2, "--pipeline-model-parallel-size 2", "T2"),
    "dp2": (2, "--use-distributed-optimizer", "T2"),
    "cp2": (2, "--context-parallel-size 2", "T2"),
    "moe_ep2": (2, "MOE --expert-model-parallel-size 2", "T2"),
    "mix_tp2": (2, "--tensor-model-parallel-size 2", "MIX"),
    "mix_pp2": (2, "--pipeline-model-parallel-size 2", "MIX"),
    "mix_cp2": (2, "--context-parallel-size 2", "MIX"),
    # BLEND: --data-path 0.5 DATA 0.5 DATA2; each source's share of the objective (per-source figures)
    "blend_tp1": (1, "BLEND", "MIX"),
    "blend_full_logits": (1, "BLEND --lm-head-chunk-size 0", "MIX"),
    "blend_tp2_sp": (2, "BLEND --tensor-model-parallel-size 2 --sequence-parallel", "MIX"),
    "blend_pp2": (2, "BLEND --pipeline-model-parallel-size 2", "MIX"),
    "blend_cp2": (2, "BLEND --context-parallel-size 2", "MIX"),
}
YAML = {"T2": "logit_kl_temperature: 2.0\n",
        "MIX": "skip_lm_loss: false\nkd_loss_scale: 0.5\nlogit_kl_temperature: 2.0\nintermediate_layer_pairs: []\n"}
FIGURES = ("loss", "grad_norm", "kd_loss", "lm_loss")


def common(student: Path, teacher: Path, data: Path, cache: Path) -> str:
    # no clipping: the step's gradients stay as computed in main_grad, for a tensor-by-tensor comparison
    return (f"--load {student} --export-kd-teacher-load {teacher} --data-path {data} --data-cache-dir {cache} "
            "--device cpu --seq-length 128 --global-batch-size 4 --micro-batch-size 2 --lr 1e-3 --min-lr 1e-4 "
            "--lr-decay-style cosine --log-interval 1000 --split 100,0,0 --seed 7 --distributed-timeout-minutes 3 "
            "--clip-grad 0")


def teacher_state(trainer, before: list) -> dict:
    """What the teacher holds after training: gradients, optimizer state, changed weights (all must be none)."""
    import torch

    teacher = [p for c in trainer.teacher.chunks for p in c.parameters()]
    optimized = {id(p) for opt in getattr(trainer.model.optimizer, "chained_optimizers", [trainer.model.optimizer])
                 for g in opt.param_groups for p in g["params"]}
    buffers = [b for c in trainer.teacher.chunks for b in c.buffers()]
    return {"requires_grad": sum(p.requires_grad for p in teacher),
            "grads": sum(p.grad is not None or hasattr(p, "main_grad") for p in teacher),
            "in_optimizer": sum(id(p) in optimized for p in teacher),
            "changed": sum(not torch.equal(a, b) for a, b in zip(teacher + buffers, before)),
            "dtypes": sorted({str(p.dtype) for p in teacher}),
            "tensors": len(teacher)}


def kd(flags: str, capture: list | None = None, grads_to: Path | None = None) -> dict:
    from megatron_sft.apps import parse
    from megatron_sft.run_finetune import _objective
    from megatron_sft.startup import start

    cfg, trainer_class = _objective(parse("finetune", shlex.split(flags)))
    trainer = trainer_class(start(cfg, training=True))
    before = [t.detach().clone() for c in trainer.teacher.chunks for t in (*c.parameters(), *c.buffers())]
    if capture is not None:
        original = trainer.next_global_batch
        trainer.next_global_batch = lambda: capture.append(original()) or capture[-1]
    if grads_to is not None:  # the first step's gradients, as main_grad holds them after its backward
        step = trainer.train_step

        def first_step_saved(batches):
            import torch

            from dpo import hf_named_grads  # the sibling worker (this script's directory is on the path)

            result = step(batches)
            if not grads_to.exists():
                torch.save(hf_named_grads(trainer), grads_to)
            return result

        trainer.train_step = first_step_saved
    trainer.run()
    return {"steps": [{k: v for k, v in r.items() if k in FIGURES or "/" in k} for r in trainer.records],
            "teacher": teacher_state(trainer, before),
            "validation": trainer.eval_history}


def main() -> None:
    import torch

    from megatron_sft.config import DataConfig

    parser = argparse.ArgumentParser()
    for name in ("--student", "--teacher", "--moe-student", "--moe-teacher", "--data", "--data2", "--out"):
        parser.add_argument(name, type=Path, required=True)
    cli = parser.parse_args()
    DataConfig.cp_multiple = property(lambda self: 4)  # every run pads samples as CP 2 does: the same packs
    ws = int(os.environ["WORLD_SIZE"])
    yamls = {key: cli.out / f"kd_{key}.yaml" for key in YAML}  # written by the test before the launch
    base = common(cli.student, cli.teacher, cli.data, cli.out / "cache")
    moe = common(cli.moe_student, cli.moe_teacher, cli.data, cli.out / "cache")
    results = {}
    for name, (size, flags, yaml_key) in LAYOUTS.items():
        if size != ws:
            continue
        run = moe if flags.startswith("MOE") else base
        if flags.startswith("BLEND"):
            run = base.replace(f"--data-path {cli.data}", f"--data-path 0.5 {cli.data} 0.5 {cli.data2}")
        capture = [] if name in ("tp1", "moe_tp1", "blend_tp1") else None
        grads = cli.out / f"kd_grads_{name}.pt" if name in ("tp1", "mix_tp1") else None
        flags = flags.removeprefix("MOE").removeprefix("BLEND")
        results[name] = kd(f"{run} {flags} --export-kd-cfg {yamls[yaml_key]} --train-iters 3", capture, grads)
        if capture:
            suffix = "" if name == "tp1" else "_" + name.removesuffix("_tp1")  # _moe, _blend
            torch.save(capture[0], cli.out / f"kd_first_batch{suffix}.pt")
    if ws == 2:
        ckpt = cli.out / "resume_ckpt"
        tp2 = f"{base} --tensor-model-parallel-size 2 --export-kd-cfg {yamls['MIX']} --train-iters 5"
        results["straight5"] = kd(tp2)
        results["first3"] = kd(f"{tp2} --exit-interval 3 --save {ckpt} --save-hf")
        # the resume names neither the teacher nor the YAML: both come from the checkpoint's record
        resumed = tp2.replace(f"--load {cli.student} --export-kd-teacher-load {cli.teacher}", f"--load {ckpt}")
        results["resumed2"] = kd(resumed.replace(f"--export-kd-cfg {yamls['MIX']}", ""))
        results["validated"] = kd(f"{base} --pipeline-model-parallel-size 2 --export-kd-cfg {yamls['T2']} "
                                  "--split 75,25,0 --eval-interval 2 --eval-iters 2 --train-iters 2")
    if int(os.environ.get("RANK", "0")) == 0:
        (cli.out / f"kd_ws{ws}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main()
