"""Hybrid (Nemotron-H) checks, several layouts per launch (one launch per world size).

    torchrun --nproc_per_node=N hybrid.py --models DIR --out DIR

Writes logits (rank 0 of the last pipeline stage) as OUT/logits/<family>__<layout>.pt for the test process to
compare against transformers; at world size 1 also packed-vs-alone logits (a boundary inside a scan chunk); at world
size 2 it saves each family at TP=2, reloads it at TP=1 and exports it to Hugging Face from PP=2. Then 3 training
steps at each layout (OUT/train_ws<N>.json: loss and grad norm per step) and, at world size 2, an exact resume.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from foundation import flags, save_logits, setup, thd_logits  # this script's folder is on sys.path
from training import train  # noqa: E402

# Training: 3 steps at each layout, GBS 4, samples padded to a multiple of 4 (2 x the largest CP) in every run so
# all runs see the same packs. name -> (world size, family, flags).
TRAIN_LAYOUTS = {
    "train_tp1": (1, "nemotron_h", ""),
    "train_moe_tp1": (1, "nemotron_h_moe", ""),
    "train_tp2": (2, "nemotron_h", "--tensor-model-parallel-size 2"),
    "train_tp2_sp": (2, "nemotron_h", "--tensor-model-parallel-size 2 --sequence-parallel"),
    "train_pp2": (2, "nemotron_h", "--pipeline-model-parallel-size 2"),
    "train_dp2": (2, "nemotron_h", "--use-distributed-optimizer"),
    "train_cp2": (2, "nemotron_h", "--context-parallel-size 2"),
    "train_moe_ep2": (2, "nemotron_h_moe", "--expert-model-parallel-size 2"),
    "train_moe_tp2_sp": (2, "nemotron_h_moe", "--tensor-model-parallel-size 2 --sequence-parallel"),
}
CP_PAD = 4

FAMILIES = ("nemotron_h", "nemotron_h_moe")
LAYOUTS = {  # name -> (tp, pp, ep, extra flags), per world size
    1: {"tp1": (1, 1, 1, [])},
    2: {"tp2": (2, 1, 1, []), "tp2_sp": (2, 1, 1, ["--sequence-parallel"]), "pp2": (1, 2, 1, []),
        "ep2": (1, 1, 2, [])},
}


def run_layouts(models: Path, out: Path, tokens) -> None:
    from megatron_sft.loading import build_and_load

    for name, (tp, pp, ep, extra) in LAYOUTS[int(os.environ["WORLD_SIZE"])].items():
        for family in FAMILIES:
            if ep > 1 and family != "nemotron_h_moe":
                continue
            args = setup(flags(models / family, tp, pp, ep) + extra)
            save_logits(build_and_load(args), tokens, out / "logits" / f"{family}__{name}.pt")


def run_context_parallel(models: Path, out: Path, tokens) -> None:
    """CP=2 logits, each row one THD sample cut as training cuts it (24 tokens: 4 chunks of 6), gathered back."""
    import torch

    from megatron_sft.loading import build_and_load
    from megatron_sft.training.hf_parity import _megatron_logits

    for family in FAMILIES:
        chunks = build_and_load(setup(flags(models / family, 1, 1, 1) + ["--context-parallel-size", "2"]))
        rows = [_megatron_logits(chunks, tokens[i:i + 1]) for i in range(tokens.shape[0])]
        if torch.distributed.get_rank() == 0:
            torch.save(torch.cat(rows), out / "logits" / f"{family}__cp2.pt")


def run_packing(models: Path, out: Path) -> None:
    """Three samples in one THD stream (lengths 5, 22, 13: boundaries at 5 and 27, inside scan chunks of 16)
    against each sample alone."""
    import torch

    from megatron_sft.inference.logits import forward_logits
    from megatron_sft.loading import build_and_load

    lengths = [5, 22, 13]
    torch.manual_seed(1)
    tokens = torch.randint(0, 400, (1, sum(lengths)))
    cu = torch.tensor([0, 5, 27, 40], dtype=torch.int32)
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    for family in FAMILIES:
        chunks = build_and_load(setup(flags(models / family, 1, 1, 1)))
        stream = {"tokens": tokens, "position_ids": positions, "cu_seqlens_padded": cu}
        packed = thd_logits(chunks, stream)
        one = thd_logits(chunks, stream, torch.tensor([0, 40], dtype=torch.int32))
        alone = [forward_logits(chunks, tokens[:, a:b]) for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())]
        torch.save({"packed": packed, "alone": alone, "one_segment": one}, out / f"packing_{family}.pt")


def run_checkpoint_roundtrip(models: Path, out: Path, tokens) -> None:
    """Save at TP=2 (a Megatron checkpoint); reload at TP=1; export to Hugging Face from PP=2."""
    from megatron_sft.conversion import hf_to_megatron, megatron_to_hf
    from megatron_sft.loading import build_and_load

    for family in FAMILIES:
        ckpt = out / "ckpt" / family
        hf_to_megatron(setup(flags(models / family, 2, 1, 1) + ["--save", str(ckpt)]))
        save_logits(build_and_load(setup(flags(ckpt, 1, 1, 1))), tokens,
                    out / "logits" / f"{family}__tp1_from_tp2.pt")
        megatron_to_hf(setup(flags(ckpt, 1, 2, 1) + ["--save", str(out / "export" / family),
                                                      "--export-dtype", "fp32"]))


def common(model: Path, data: Path, cache: Path) -> str:
    return (f"--load {model} --data-path {data} --data-cache-dir {cache} --device cpu --seq-length 64 "
            "--global-batch-size 4 --micro-batch-size 2 --lr 1e-3 --min-lr 1e-4 --lr-decay-style cosine "
            "--log-interval 1000 --split 100,0,0 --seed 7 --distributed-timeout-minutes 3")


def lora_runs(cli, results: dict) -> None:
    """LoRA at TP=2 + SP on the default hybrid targets, --save-hf with --merge-lora (fp32); then the LoRA
    checkpoint's logits, for the test to compare with peft on transformers and with the merged model."""
    import torch

    from megatron_sft.loading import build_and_load

    tokens = torch.load(cli.out / "tokens.pt")
    for family in FAMILIES:
        save = cli.out / "lora" / family
        results[f"lora_{family}"] = train(
            f"{common(cli.models / family, cli.data, cli.out / 'cache')} --tensor-model-parallel-size 2 "
            f"--sequence-parallel --peft lora --lora-rank 4 --lr 1e-2 --train-iters 3 --save {save} --save-hf final "
            "--save-hf-dtype fp32 --merge-lora")
        save_logits(build_and_load(setup(flags(save, 2, 1, 1))), tokens, cli.out / "logits" / f"lora_{family}.pt")


def training_runs(ws: int, cli, results: dict) -> None:
    """3 steps at each layout of this world size; at DP=2, 6 straight steps against 3 + a resumed 3."""
    from megatron_sft.config import DataConfig

    DataConfig.cp_multiple = property(lambda self: CP_PAD)
    for name, (size, family, extra) in TRAIN_LAYOUTS.items():
        if size == ws:
            results[name] = train(f"{common(cli.models / family, cli.data, cli.out / 'cache')} {extra} "
                                  "--train-iters 3")
    if ws == 2:
        lora_runs(cli, results)
        base = common(cli.models / "nemotron_h", cli.data, cli.out / "cache")
        ckpt = cli.out / "resume_ckpt"
        results["straight6"] = train(f"{base} --train-iters 6")
        results["first3"] = train(f"{base} --train-iters 6 --exit-interval 3 --save {ckpt}")
        results["resumed3"] = train(f"{base.replace(str(cli.models / 'nemotron_h'), str(ckpt))} --train-iters 6")


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="JSONL conversations for the training runs")
    cli = parser.parse_args()
    tokens = torch.load(cli.out / "tokens.pt")
    run_layouts(cli.models, cli.out, tokens)
    if int(os.environ["WORLD_SIZE"]) == 1:
        run_packing(cli.models, cli.out)
    if int(os.environ["WORLD_SIZE"]) == 2:
        run_context_parallel(cli.models, cli.out, tokens)
        run_checkpoint_roundtrip(cli.models, cli.out, tokens)
    results: dict = {}
    training_runs(int(os.environ["WORLD_SIZE"]), cli, results)
    if torch.distributed.get_rank() == 0:
        (cli.out / f"train_ws{os.environ['WORLD_SIZE']}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main()
