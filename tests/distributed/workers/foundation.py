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
    args = setup_device(args)
    init_process_group(args.device, args.distributed_timeout_minutes)
    init_parallel_state(tp=args.tensor_model_parallel_size, pp=args.pipeline_model_parallel_size,
                        ep=args.expert_model_parallel_size, etp=args.expert_tensor_parallel_size,
                        vp=args.virtual_pipeline_model_parallel_size, seed=args.seed)
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
    from megatron_sft.loading import build_and_load

    for name, (tp, pp, ep) in LAYOUTS[int(os.environ["WORLD_SIZE"])].items():
        for family in FAMILIES:
            if ep > 1 and family != "qwen3_moe":
                continue
            args = setup(flags(models / family, tp, pp, ep))
            save_logits(build_and_load(args), tokens, out / "logits" / f"{family}__{name}.pt")


def run_checkpoint_roundtrip(models: Path, out: Path, tokens) -> None:
    """Save at TP=2; reload at TP=1 (DP=2) and at PP=2; export to HF from PP=2."""
    from megatron_sft.conversion import hf_to_megatron, megatron_to_hf
    from megatron_sft.loading import build_and_load

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

    from megatron_sft.loading import build_and_load
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


# Packed (THD) attention: name -> (family, extra flags, packs per micro-batch), per world size.
PACKED_FLAGS = {  # layout -> (extra flags, packs per micro-batch), per world size
    1: {"tp1": ([], 1), "tp1_mb4": ([], 4)},
    2: {"tp2": (["--tensor-model-parallel-size", "2"], 1),
        "tp2_sp": (["--tensor-model-parallel-size", "2", "--sequence-parallel"], 1),
        "pp2_vp2": (["--pipeline-model-parallel-size", "2", "--num-layers-per-virtual-pipeline-stage", "1"], 1)},
}


def packed_name(layout: str, family: str) -> str:
    return layout if family == "qwen3" else f"{layout}_{family}"


# Packed (THD) attention: name -> (family, extra flags, packs per micro-batch), per world size.
PACKED_LAYOUTS = {ws: {packed_name(layout, family): (family, flags, n) for layout, (flags, n) in layouts.items()
                       for family in FAMILIES} for ws, layouts in PACKED_FLAGS.items()}
PACKED_LAYOUTS[2]["ep2"] = ("qwen3_moe", ["--expert-model-parallel-size", "2"], 1)


def fullest_packs(models: Path, out: Path, data: Path, n: int) -> list[dict]:
    from transformers import AutoTokenizer

    from megatron_sft.data import SFTDataset

    tokenizer = AutoTokenizer.from_pretrained(models / "qwen3")
    ds = SFTDataset(str(data), tokenizer, seq_length=96, cache_dir=str(out / "pack_cache"))
    packs = sorted((ds[i] for i in range(len(ds))), key=lambda p: -len(p["cu_seqlens"]))
    return packs[:n]


def thd_logits(chunks, stream: dict, bounds=None):
    from megatron_sft.inference.logits import forward_logits
    from megatron_sft.training.inputs import thd_params

    cu = stream["cu_seqlens_padded"] if bounds is None else bounds
    params = thd_params(cu, cu, int((cu[1:] - cu[:-1]).max()))
    return forward_logits(chunks, stream["tokens"], stream["position_ids"], None, packed_seq_params=params)


def alone_logits(chunks, tokens):
    """A sample on its own (plain causal attention), padded at the end to an even length for SP."""
    import torch

    from megatron_sft.inference.logits import forward_logits

    n = tokens.shape[1]
    padded = torch.cat([tokens, tokens.new_zeros(1, n % 2)], dim=1)
    logits = forward_logits(chunks, padded)
    return None if logits is None else logits[:, :n]


def run_packed_attention(models: Path, out: Path, data: Path) -> None:
    """THD logits of packed samples against each sample alone (and at world size 1, the local backend)."""
    import torch
    from megatron.core import parallel_state as ps

    from megatron_sft.loading import build_and_load
    from megatron_sft.data.batch import collate, join_rows

    for name, (family, extra, n_packs) in PACKED_LAYOUTS[int(os.environ["WORLD_SIZE"])].items():
        batch = collate(fullest_packs(models, out, data, n_packs), with_attention_mask=True)
        stream = join_rows(batch)
        chunks = build_and_load(setup(flags(models / family, 1, 1, 1) + extra))
        cu = stream["cu_seqlens_padded"]
        result = {"cu": cu.tolist(), "packed": thd_logits(chunks, stream),
                  "alone": [alone_logits(chunks, stream["tokens"][:, a:b]) for a, b in zip(cu[:-1], cu[1:])]}
        if name == "tp1":  # the check can fail: the same stream without its boundaries
            result["one_segment"] = thd_logits(chunks, stream, torch.tensor([0, cu[-1]], dtype=torch.int32))
        if name.startswith("tp1_mb4"):  # Megatron's DotProductAttention with the explicit mask, row by row
            local = build_and_load(setup(flags(models / family, 1, 1, 1) + ["--attention-backend", "local"]))
            from megatron_sft.inference.logits import forward_logits

            result["local"] = forward_logits(local, batch["tokens"], batch["position_ids"], batch["attention_mask"])
        if result["packed"] is not None and ps.get_tensor_model_parallel_rank() == 0 \
                and ps.get_data_parallel_rank() == 0:
            torch.save(result, out / f"packed_attention_{name}.pt")


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--chat-data", type=Path, help="JSONL conversations for the packing check (world size 1)")
    cli = parser.parse_args()
    tokens = torch.load(cli.out / "tokens.pt")
    run_layouts(cli.models, cli.out, tokens)
    if cli.chat_data and int(os.environ["WORLD_SIZE"]) in PACKED_LAYOUTS:
        run_packed_attention(cli.models, cli.out, cli.chat_data)
    if int(os.environ["WORLD_SIZE"]) == 1 and cli.chat_data:
        run_packing(cli.models, cli.out, cli.chat_data)
    if int(os.environ["WORLD_SIZE"]) == 2:
        run_checkpoint_roundtrip(cli.models, cli.out, tokens)
    from megatron_sft.runtime.distributed import shutdown

    shutdown()


if __name__ == "__main__":  # dist_checkpointing's spawned saver re-imports this file
    main()
