"""Hybrid (Nemotron-H) checks, several layouts per launch (one launch per world size).

    torchrun --nproc_per_node=N hybrid.py --models DIR --out DIR

Writes logits (rank 0 of the last pipeline stage) as OUT/logits/<family>__<layout>.pt for the test process to
compare against transformers; at world size 1 also packed-vs-alone logits (a boundary inside a scan chunk); at world
size 2 it saves each family at TP=2, reloads it at TP=1 and exports it to Hugging Face from PP=2.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from foundation import flags, save_logits, setup, thd_logits  # this script's folder is on sys.path

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


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    cli = parser.parse_args()
    tokens = torch.load(cli.out / "tokens.pt")
    run_layouts(cli.models, cli.out, tokens)
    if int(os.environ["WORLD_SIZE"]) == 1:
        run_packing(cli.models, cli.out)
    if int(os.environ["WORLD_SIZE"]) == 2:
        run_checkpoint_roundtrip(cli.models, cli.out, tokens)


if __name__ == "__main__":
    main()
