"""The supervised-token chunked LM head against Megatron's full-logits loss, one launch per world size.

    torchrun --nproc_per_node=N lm_head.py --models DIR --data FILE --out DIR

For each layout: one global batch through the schedule with --lm-head-chunk-size 0 (Megatron's output layer
on every token, then vocab_parallel_cross_entropy and the mask) and with small chunk sizes, recording the loss
and the largest relative difference of every parameter's gradient (main_grad after the DP reduction) on every
rank; then 3 training steps each way (loss and grad norm per step). World size 1 also resumes a chunked run
from a full-logits checkpoint. Rank 0 writes OUT/lm_head_ws<N>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
from pathlib import Path

CHUNKS = (7, 1024)  # 7: several chunks per micro-batch and a partial last one; 1024: one chunk
# name -> (world size, family, flags, how the batch is altered)
LAYOUTS = {
    "tp1": (1, "qwen3", "", None),
    "tp1_untied": (1, "qwen3_untied", "", None),
    "mb4": (1, "qwen3", "--micro-batch-size 4", None),
    "lora": (1, "qwen3", "--peft lora --lora-rank 4 --lora-alpha 8", None),
    "bf16": (1, "llama3", "--bf16", None),
    "tp2": (2, "qwen3", "--tensor-model-parallel-size 2", None),
    "tp2_sp": (2, "qwen3", "--tensor-model-parallel-size 2 --sequence-parallel", None),
    "pp2": (2, "qwen3", "--pipeline-model-parallel-size 2", None),
    "cp2": (2, "qwen3", "--context-parallel-size 2", None),
    "ep2": (2, "qwen3_moe", "--expert-model-parallel-size 2 --moe-aux-loss-coeff 0", None),
    "dp2_rank1_unsupervised": (2, "qwen3", "", "rank1_unsupervised"),
    "cp2_one_rank_supervised": (2, "qwen3", "--context-parallel-size 2", "last_tokens_only"),
}


def common(model: Path, data: Path, cache: Path) -> str:
    return (f"--load {model} --data-path {data} --data-cache-dir {cache} --device cpu --seq-length 64 "
            "--global-batch-size 4 --lr 1e-3 --min-lr 1e-4 --lr-decay-style cosine --log-interval 1000 "
            "--split 100,0,0 --seed 7 --distributed-timeout-minutes 3")


def alter(batches: list[dict], how: str | None) -> list[dict]:
    """Batches whose supervised tokens are zero on some rank: all of DP rank 1's, or all but the last few
    supervised tokens of each row (under CP=2 each sample's last quarter is rank 0's, so rank 1 has none)."""
    import torch

    if how == "rank1_unsupervised" and int(os.environ["RANK"]) == 1:
        return [{**b, "loss_mask": torch.zeros_like(b["loss_mask"])} for b in batches]
    if how == "last_tokens_only":
        out = []
        for b in batches:
            mask = b["loss_mask"].clone()
            keep = mask.nonzero()[-2:]
            mask.zero_()
            mask[tuple(keep.T)] = 1
            out.append({**b, "loss_mask": mask})
        return out
    return batches


def grads(model) -> dict:
    return {name: p.main_grad.detach().clone() for i, c in enumerate(model.chunks)
            for name, p in ((f"{i}.{n}", p) for n, p in c.named_parameters()) if p.requires_grad}


def one_batch(flags: str, how: str | None) -> dict:
    """Loss and per-parameter gradient differences of the same batch at every chunk size."""
    import torch

    from megatron_sft.arguments import parse_args
    from megatron_sft.training.loop import start_training
    from megatron_sft.training.step import _loss_everywhere, run_schedule

    trainer = start_training(parse_args(shlex.split(f"{flags} --train-iters 1")))
    cfg, model = trainer.cfg, trainer.model
    batches = alter(trainer.next_global_batch(), how)
    from megatron_sft.training.inputs import model_inputs

    local = float(sum(model_inputs(b, model.layout, "cpu")["loss_mask"].sum() for b in batches))
    per_rank = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(per_rank, local)  # supervised tokens each rank's model sees
    out = {"supervised_per_rank": per_rank, "loss": {}, "max_rel_grad_diff": {}, "params": 0}
    reference = None
    for chunk in (0, *CHUNKS):
        model.lm_head_chunk_size = chunk
        for c in model.chunks:
            c.zero_grad_buffer()
        model.optimizer.zero_grad()
        reports = run_schedule(model, batches, cfg.data.seq_length, cfg.training.micro_batch_size, False)
        out["loss"][chunk] = _loss_everywhere(reports)
        now = grads(model)
        if reference is None:
            reference, out["params"] = now, len(now)
            continue
        worst = max(((now[k] - g).abs().max() / g.abs().max().clamp_min(1e-30)).item() for k, g in reference.items())
        worst = torch.tensor([worst])
        torch.distributed.all_reduce(worst, op=torch.distributed.ReduceOp.MAX)
        out["max_rel_grad_diff"][chunk] = float(worst)
    return out


def three_steps(flags: str) -> dict:
    from megatron_sft.arguments import parse_args
    from megatron_sft.training.loop import start_training

    runs = {}
    for chunk in (0, 7):
        trainer = start_training(parse_args(shlex.split(f"{flags} --train-iters 3 --lm-head-chunk-size {chunk}")))
        trainer.run()
        runs[chunk] = [{"loss": r["loss"], "grad_norm": r["grad_norm"]} for r in trainer.records]
    return runs


def resume_across_chunk_change(base: str, out: Path) -> dict:
    """3 steps at chunk 7 in one go; and 2 steps at chunk 0, saved, resumed for the 3rd at chunk 7."""
    from megatron_sft.arguments import parse_args
    from megatron_sft.training.loop import start_training

    def run(flags: str) -> list:
        trainer = start_training(parse_args(shlex.split(flags)))
        trainer.run()
        return [{"loss": r["loss"], "grad_norm": r["grad_norm"]} for r in trainer.records]

    ckpt = out / "resume_ckpt"
    straight = run(f"{base} --train-iters 3 --lm-head-chunk-size 7")
    first = run(f"{base} --train-iters 3 --exit-interval 2 --lm-head-chunk-size 0 --save {ckpt}")
    load = base.split("--load ")[1].split()[0]
    rest = run(f"{base.replace(load, str(ckpt))} --train-iters 3 --lm-head-chunk-size 7")
    return {"straight": straight, "resumed": first + rest}


def main() -> None:
    parser = argparse.ArgumentParser()
    for flag in ("--models", "--data", "--out"):
        parser.add_argument(flag, type=Path, required=True)
    cli = parser.parse_args()
    ws = int(os.environ["WORLD_SIZE"])
    results: dict = {}
    for name, (size, family, extra, how) in LAYOUTS.items():
        if size != ws:
            continue
        flags = f"{common(cli.models / family, cli.data, cli.out / 'cache')} {extra}"
        results[name] = {"batch": one_batch(flags, how)}
        if how is None:
            results[name]["steps"] = three_steps(flags)
    if ws == 1:
        results["resume"] = resume_across_chunk_change(common(cli.models / "qwen3", cli.data, cli.out / "cache"),
                                                       cli.out)
    if int(os.environ["RANK"]) == 0:
        (cli.out / f"lm_head_ws{ws}.json").write_text(json.dumps(results, indent=1))
    from megatron_sft.runtime.distributed import shutdown

    shutdown()


if __name__ == "__main__":  # dist_checkpointing's spawned saver re-imports this file
    main()
