"""LoRA checks, several runs per launch (one launch per world size; 2 before 1: 1 reloads 2's checkpoint).

    torchrun --nproc_per_node=N lora.py --models DIR --data FILE --out DIR     (N = 4, 2, 1)

OUT/tokens.pt (from the test) are the tokens every logits check runs on; OUT/random_adapter/ is a PEFT
folder the test wrote with random factors. Rank 0 writes OUT/lora_ws<N>.json (per-step loss and grad
norm of each run, base-weight checks) and logits as OUT/logits/<name>.pt; the test compares them with
transformers and peft.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
from pathlib import Path

LORA = "--peft lora --lora-rank 4 --lora-alpha 8"
MOE = "--moe-aux-loss-coeff 0"
RECOMPUTE = "--recompute-granularity full --recompute-method uniform --recompute-num-layers 1"
# name -> (world size, model family, flags): 3 steps each, compared with tp1 (dense) or moe_tp1.
PARITY = {
    "tp1": (1, "qwen3", ""),
    "recompute": (1, "qwen3", RECOMPUTE),
    "moe_tp1": (1, "qwen3_moe", MOE),
    "tp2": (2, "qwen3", "--tensor-model-parallel-size 2"),
    "tp2_sp": (2, "qwen3", "--tensor-model-parallel-size 2 --sequence-parallel"),
    "pp2": (2, "qwen3", "--pipeline-model-parallel-size 2"),
    "dp2": (2, "qwen3", "--use-distributed-optimizer"),
    "moe_ep2": (2, "qwen3_moe", f"{MOE} --expert-model-parallel-size 2"),
    # 4 ranks: expert-data-parallel (2) is not the data-parallel group (4); expert adapters reduce over the former
    "moe_ep2_dp4": (4, "qwen3_moe", f"{MOE} --expert-model-parallel-size 2"),
}
EXPORT_FAMILIES = ("qwen3", "llama3", "qwen2", "qwen3_moe")


def common(model: Path, cli) -> str:
    return (f"--load {model} --data-path {cli.data} --data-cache-dir {cli.out / 'cache'} --device cpu "
            "--seq-length 64 --global-batch-size 4 --lr 1e-2 --min-lr 1e-3 --lr-decay-style cosine "
            "--log-interval 1000 --split 100,0,0 --seed 7 --distributed-timeout-minutes 3")


def train(flags: str):
    from megatron_sft.arguments import parse_args
    from megatron_sft.training.loop import start_training

    args = parse_args(shlex.split(flags))
    trainer = start_training(args)
    trainer.run()
    return trainer, [{"loss": r["loss"], "grad_norm": r["grad_norm"]} for r in trainer.records]


def logits(flags: str, name: str, cli) -> None:
    """Build and load a model as the inference tools do; rank 0 of the last stage saves its logits."""
    import torch
    from megatron.core import parallel_state as ps

    from megatron_sft.arguments import parse_args
    from megatron_sft.loading import build_and_load
    from megatron_sft.inference.logits import forward_logits
    from megatron_sft.runtime.distributed import init_from_args

    args = parse_args(shlex.split(f"{flags} --device cpu --seq-length 32 --distributed-timeout-minutes 3"))
    args = init_from_args(args)
    out = forward_logits(build_and_load(args), torch.load(cli.out / "tokens.pt"))
    if out is not None and ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0:
        (cli.out / "logits").mkdir(exist_ok=True)
        torch.save(out, cli.out / "logits" / f"{name}.pt")


def convert(flags: str) -> None:
    from megatron_sft.arguments import parse_args
    from megatron_sft.conversion import convert as run
    from megatron_sft.runtime.distributed import init_from_args

    args = parse_args(shlex.split(f"{flags} --device cpu --distributed-timeout-minutes 3"))
    args = init_from_args(args)
    run(args)


def parity_runs(ws: int, cli, results: dict) -> None:
    for name, (size, family, flags) in PARITY.items():
        if size == ws:
            results[name] = train(f"{common(cli.models / family, cli)} {LORA} {flags} --train-iters 3")[1]


def adapter_logits(ws: int, cli) -> None:
    """Base, fresh adapters (B = 0) and the test's random adapter, at TP=ws."""
    tp = f"--tensor-model-parallel-size {ws}"
    qwen3 = cli.models / "qwen3"
    logits(f"--load {qwen3} {tp}", f"base_tp{ws}", cli)
    logits(f"--load {qwen3} {tp} {LORA}", f"b0_tp{ws}", cli)
    logits(f"--load {qwen3} {tp} --peft lora --lora-load {cli.out / 'random_adapter'}", f"random_tp{ws}", cli)


def base_unchanged(trainer, family: str, cli) -> float:
    """Largest difference between the trained model's frozen weights and a fresh import of the base."""
    import torch

    from megatron_sft.checkpointing.hf import import_hf_weights
    from megatron_sft.to_mcore import transformer_config
    from megatron_sft.models.builder import build_model_chunks
    from megatron_sft.peft.lora import is_lora_key
    from megatron_sft.models.builder import unwrap

    trained = [unwrap(c) for c in trainer.model.chunks]
    fresh = build_model_chunks(trainer.cfg, transformer_config(trainer.cfg), trainer.cfg.padded_vocab_size)
    import_hf_weights(fresh, cli.models / family, torch.float32)
    worst = 0.0
    for a, b in zip(trained, fresh):
        got = {k: v for k, v in a.state_dict().items() if not is_lora_key(k) and torch.is_tensor(v)}
        want = {k: v for k, v in b.state_dict().items() if torch.is_tensor(v)}
        assert got.keys() == want.keys(), sorted(set(got) ^ set(want))[:4]
        worst = max([worst] + [(got[k].float() - want[k].float()).abs().max().item() for k in got if got[k].numel()])
    return worst


def export_runs(cli, results: dict) -> None:
    """Per family: train, save, reload, export as a PEFT adapter and merged, reload the adapter."""
    for family in EXPORT_FAMILIES:
        ckpt, export = cli.out / "ckpt" / family, cli.out / "export"
        extra = MOE if family == "qwen3_moe" else ""
        trainer, results[f"train_{family}"] = train(
            f"{common(cli.models / family, cli)} {LORA} {extra} --train-iters 3 --save {ckpt}")
        results[f"base_unchanged_{family}"] = base_unchanged(trainer, family, cli)
        logits(f"--load {ckpt}", f"trained_{family}", cli)
        convert(f"--load {ckpt} --save {export / f'{family}_peft'} --export-dtype fp32")
        convert(f"--load {ckpt} --save {export / f'{family}_merged'} --export-dtype fp32 --merge-lora")
        logits(f"--load {cli.models / family} --peft lora --lora-load {export / f'{family}_peft'}",
               f"lora_load_{family}", cli)


def resume_runs(cli, results: dict) -> None:
    base = f"{common(cli.models / 'qwen3', cli)} {LORA} --use-distributed-optimizer"
    ckpt = cli.out / "resume_ckpt"
    results["straight10"] = train(f"{base} --train-iters 10")[1]
    results["first5"] = train(f"{base} --train-iters 10 --exit-interval 5 --save {ckpt}")[1]
    results["resumed5"] = train(f"{base.replace(str(cli.models / 'qwen3'), str(ckpt))} --train-iters 10")[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    for flag in ("--models", "--data", "--out"):
        parser.add_argument(flag, type=Path, required=True)
    cli = parser.parse_args()
    ws = int(os.environ["WORLD_SIZE"])
    results: dict = {}
    parity_runs(ws, cli, results)
    if ws in (1, 2):
        adapter_logits(ws, cli)
    tp2_ckpt = cli.out / "ckpt_tp2"
    if ws == 2:
        train(f"{common(cli.models / 'qwen3', cli)} {LORA} --tensor-model-parallel-size 2 --train-iters 3 "
              f"--save {tp2_ckpt}")
        logits(f"--load {tp2_ckpt} --tensor-model-parallel-size 2", "tp2_saved_at_tp2", cli)
        resume_runs(cli, results)
    if ws == 1:
        logits(f"--load {tp2_ckpt}", "tp2_saved_at_tp1", cli)
        export_runs(cli, results)
    if int(os.environ["RANK"]) == 0:
        (cli.out / f"lora_ws{ws}.json").write_text(json.dumps(results, indent=1))
    from megatron_sft.runtime.distributed import shutdown

    shutdown()


if __name__ == "__main__":  # dist_checkpointing's spawned saver re-imports this file
    main()
