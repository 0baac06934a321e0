"""Foundation checks, several layouts per launch (one launch per world size).

    torchrun --nproc_per_node=N foundation.py --models DIR --out DIR

Writes logits (from rank 0 of the last pipeline stage) as OUT/logits/<family>__<layout>.pt, for
the test process to compare against transformers. At world size 2 it also saves each family at
TP=2, reloads that checkpoint at TP=1 and at PP=2, and exports it to HF from the PP=2 layout.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

FAMILIES = ("qwen3", "qwen3_untied", "llama3", "qwen2", "qwen3_moe")
LAYOUTS = {  # name -> (tp, pp, ep), per world size
    1: {"tp1": (1, 1, 1)},
    2: {"tp2": (2, 1, 1), "pp2": (1, 2, 1), "ep2": (1, 1, 2)},
    4: {"tp2pp2": (2, 2, 1)},
}


def flags(load: str | Path, tp: int, pp: int, ep: int) -> list[str]:
    return ["--load", str(load), "--device", "cpu", "--seq-length", "32", "--micro-batch-size", "1",
            "--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size", str(pp),
            "--expert-model-parallel-size", str(ep), "--distributed-timeout-minutes", "3"]


def setup(argv: list[str]):
    """Parse flags and (re)build the parallel state for this layout."""
    from megatron_sft.arguments import parse_args
    from megatron_sft.runtime.device import setup_device
    from megatron_sft.runtime.distributed import init_parallel_state, init_process_group

    args = parse_args(argv)
    setup_device(args)
    init_process_group(args.device, args.distributed_timeout_minutes)
    init_parallel_state(tp=args.tensor_model_parallel_size, pp=args.pipeline_model_parallel_size,
                        ep=args.expert_model_parallel_size, etp=args.expert_tensor_parallel_size, seed=args.seed)
    return args


def save_logits(chunks, tokens, path: Path) -> None:
    import torch
    from megatron.core import parallel_state as ps

    from megatron_sft.inference.logits import forward_logits

    logits = forward_logits(chunks, tokens)
    if logits is not None and ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(logits, path)


def run_layouts(models: Path, out: Path, tokens) -> None:
    from megatron_sft.checkpointing.convert import build_and_load

    for name, (tp, pp, ep) in LAYOUTS[int(os.environ["WORLD_SIZE"])].items():
        for family in FAMILIES:
            if ep > 1 and family != "qwen3_moe":
                continue
            args = setup(flags(models / family, tp, pp, ep))
            save_logits(build_and_load(args), tokens, out / "logits" / f"{family}__{name}.pt")


def run_checkpoint_roundtrip(models: Path, out: Path, tokens) -> None:
    """Save at TP=2; reload at TP=1 (DP=2) and at PP=2; export to HF from PP=2."""
    from megatron_sft.checkpointing.convert import build_and_load, hf_to_megatron, megatron_to_hf

    for family in FAMILIES:
        ckpt = out / "ckpt" / family
        args = setup(flags(models / family, 2, 1, 1) + ["--save", str(ckpt)])
        hf_to_megatron(args)
        for name, (tp, pp) in {"tp1_from_tp2": (1, 1), "pp2_from_tp2": (1, 2)}.items():
            args = setup(flags(ckpt, tp, pp, 1))
            save_logits(build_and_load(args), tokens, out / "logits" / f"{family}__{name}.pt")
        args = setup(flags(ckpt, 1, 2, 1) + ["--save", str(out / "export" / family), "--export-dtype", "fp32"])
        megatron_to_hf(args)


def run_packing(models: Path, out: Path, data: Path) -> None:
    """Logits of a multi-sample pack and of each sample alone, fp32 and bf16 (world size 1)."""
    import torch
    from transformers import AutoTokenizer

    from megatron_sft.checkpointing.convert import build_and_load
    from megatron_sft.data import SFTDataset
    from megatron_sft.data.batch import attention_mask_from_cu_seqlens
    from megatron_sft.inference.logits import forward_logits

    tokenizer = AutoTokenizer.from_pretrained(models / "qwen3")
    ds = SFTDataset(str(data), tokenizer, seq_length=96, cache_dir=str(out / "pack_cache"))
    pack = max((ds[i] for i in range(len(ds))), key=lambda p: len(p["cu_seqlens"]))
    tokens, positions = pack["tokens"][None], pack["position_ids"][None]
    mask = attention_mask_from_cu_seqlens(pack["cu_seqlens_padded"], tokens.shape[1])[None]
    for dtype_flags, tag in (([], "fp32"), (["--bf16"], "bf16")):
        args = setup(flags(models / "qwen3", 1, 1, 1) + dtype_flags)
        chunks = build_and_load(args)
        packed = forward_logits(chunks, tokens, positions, mask)
        cu = pack["cu_seqlens"].tolist()
        alone = [forward_logits(chunks, tokens[:, a:b]) for a, b in zip(cu[:-1], cu[1:])]
        unmasked = forward_logits(chunks, tokens, positions, None)  # what a kernel ignoring the mask gives
        torch.save({"cu": cu, "packed": packed, "alone": alone, "unmasked": unmasked}, out / f"packing_{tag}.pt")


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--chat-data", type=Path, help="JSONL conversations for the packing check (world size 1)")
    cli = parser.parse_args()
    tokens = torch.load(cli.out / "tokens.pt")
    run_layouts(cli.models, cli.out, tokens)
    if int(os.environ["WORLD_SIZE"]) == 1 and cli.chat_data:
        run_packing(cli.models, cli.out, cli.chat_data)
    if int(os.environ["WORLD_SIZE"]) == 2:
        run_checkpoint_roundtrip(cli.models, cli.out, tokens)
    from megatron_sft.runtime.distributed import shutdown

    shutdown()


if __name__ == "__main__":  # dist_checkpointing's spawned saver re-imports this file
    main()
