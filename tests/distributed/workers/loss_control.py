"""Loss-control runs: --loss-normalization sample and --neftune-noise-alpha, several per launch.

    torchrun --nproc_per_node=N loss_control.py --model DIR --data FILE --out DIR

Rank 0 writes OUT/loss_control_ws<N>.json: per named run, every step's loss and grad norm; at world size 1 also the
first global batch of each captured run (OUT/first_<run>.pt), for the test to recompute with transformers.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
from pathlib import Path

SAMPLE = "--loss-normalization sample"
NEFT = "--neftune-noise-alpha 5"
# name -> (world size, flags); GBS 4 packs everywhere, so every run sees the same global batch
RUNS = {
    "sample_tp1": (1, SAMPLE),
    "sample_mbs1": (1, f"{SAMPLE} --micro-batch-size 1"),
    "sample_mbs4": (1, f"{SAMPLE} --micro-batch-size 4"),
    "sample_full_logits": (1, f"{SAMPLE} --lm-head-chunk-size 0"),
    "neft_tp1": (1, NEFT),
    "sample_tp2_sp": (2, f"{SAMPLE} --tensor-model-parallel-size 2 --sequence-parallel"),
    "sample_pp2": (2, f"{SAMPLE} --pipeline-model-parallel-size 2"),
    "sample_cp2": (2, f"{SAMPLE} --context-parallel-size 2"),
    "sample_dp2": (2, SAMPLE),
    "neft_tp2_sp": (2, f"{NEFT} --tensor-model-parallel-size 2 --sequence-parallel"),
    "neft_pp2": (2, f"{NEFT} --pipeline-model-parallel-size 2"),
    "neft_cp2": (2, f"{NEFT} --context-parallel-size 2"),
    "neft_dp2": (2, NEFT),
    # BLEND: --data-path 0.5 DATA 0.5 DATA2, a validation share; per-source figures
    "blend_tp1": (1, "BLEND"),
    "blend_full_logits": (1, "BLEND --lm-head-chunk-size 0"),
    "blend_tp2_sp": (2, "BLEND --tensor-model-parallel-size 2 --sequence-parallel"),
    "blend_pp2": (2, "BLEND --pipeline-model-parallel-size 2"),
    "blend_cp2": (2, "BLEND --context-parallel-size 2"),
    "blend_dp2": (2, "BLEND"),
    # SETS: --train-data-path DATA --valid-data-path EASY HARD --multiple-validation-sets, lr 0, validated at step 1
    "sets_tp1": (1, "SETS"),
    "sets_pp2": (2, "SETS --pipeline-model-parallel-size 2"),
    "sets_dp2": (2, "SETS"),
}
CAPTURED = ("sample_tp1", "neft_tp1", "blend_tp1")


def train(flags: str, capture: list | None = None) -> dict:
    from megatron_sft.apps import parse
    from megatron_sft.run_finetune import _objective
    from megatron_sft.startup import start

    cfg, trainer_class = _objective(parse("finetune", shlex.split(flags)))
    from megatron_sft.training.loop import Trainer

    trainer = (trainer_class or Trainer)(start(cfg, training=True))
    validation = []  # the figures of every validation (per-source losses on a blend)
    evaluate = trainer.evaluate
    trainer.evaluate = lambda iters: (lambda out: validation.append(out[1]) or out)(evaluate(iters))
    if capture is not None:
        original = trainer.next_global_batch
        trainer.next_global_batch = lambda: capture.append(original()) or capture[-1]
    trainer.run()
    return {"steps": [{k: v for k, v in r.items() if k in ("loss", "grad_norm") or "/" in k} for r in trainer.records],
            "validation": trainer.eval_history, "validation_figures": validation}


def main() -> None:
    import torch

    from megatron_sft.config import DataConfig

    parser = argparse.ArgumentParser()
    for name in ("--model", "--data", "--data2", "--out"):
        parser.add_argument(name, type=Path, required=True)
    parser.add_argument("--valid-sets", type=Path, nargs=2, required=True)
    cli = parser.parse_args()
    DataConfig.cp_multiple = property(lambda self: 4)  # every run pads samples as CP 2 does: the same packs
    ws = int(os.environ["WORLD_SIZE"])
    base = (f"--load {cli.model} --data-path {cli.data} --data-cache-dir {cli.out / 'cache'} --device cpu "
            "--seq-length 256 --global-batch-size 4 --micro-batch-size 2 --lr 1e-3 --min-lr 1e-4 "
            "--lr-decay-style cosine --log-interval 1000 --split 100,0,0 --seed 7 --distributed-timeout-minutes 3 "
            "--clip-grad 0")
    results = {}
    for name, (size, flags) in RUNS.items():
        if size != ws:
            continue
        capture = [] if name in CAPTURED else None
        run = base
        if flags.startswith("BLEND"):
            run = base.replace(f"--data-path {cli.data}", f"--data-path 0.5 {cli.data} 0.5 {cli.data2}").replace(
                "--split 100,0,0", "--split 80,20,0 --eval-interval 3 --eval-iters 1")
        if flags.startswith("SETS"):  # the initial weights validated (lr 0): transformers is the reference
            easy, hard = cli.valid_sets
            run = base.replace(f"--data-path {cli.data}", f"--train-data-path {cli.data} --valid-data-path {easy} "
                               f"{hard} --multiple-validation-sets").replace("--split 100,0,0", "").replace(
                "--lr 1e-3 --min-lr 1e-4", "--lr 0 --min-lr 0 --eval-interval 1 --eval-iters 1")
            results[name] = train(f"{run} {flags.removeprefix('SETS')} --train-iters 1")
            continue
        results[name] = train(f"{run} {flags.removeprefix('BLEND')} --train-iters 3", capture)
        if capture:
            torch.save(capture[0], cli.out / f"first_{name}.pt")
    if ws == 2:  # NEFTune's noise on a resume: 4 straight = 2, a save, 2 more
        ckpt = cli.out / "neft_ckpt"
        results["neft_straight4"] = train(f"{base} {NEFT} --train-iters 4")
        results["neft_first2"] = train(f"{base} {NEFT} --train-iters 4 --exit-interval 2 --save {ckpt}")
        results["neft_resumed2"] = train(f"{base.replace(str(cli.model), str(ckpt))} {NEFT} --train-iters 4")
    if int(os.environ.get("RANK", "0")) == 0:
        (cli.out / f"loss_control_ws{ws}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main()
