"""--save-hf runs (world size 2) and their references (world size 1), one launch per world size.

    torchrun --nproc_per_node=2 save_hf.py --models DIR --data FILE --out DIR   trains, writing iter_N/hf/
    torchrun --nproc_per_node=1 save_hf.py --models DIR --data FILE --out DIR   convert.py's export of each
                                                    checkpoint and the checkpoint's logits, loaded at TP=1

OUT/tokens.pt (written by the test) are the tokens of every logits check. World size 1 writes
OUT/convert/<name>/ (the function behind convert.sh), OUT/modelopt/<name>/ (nvidia-modelopt's exporter) and OUT/logits/<name>.pt; the test compares them with
OUT/ckpt/<name>/iter_0000003/hf/ loaded by transformers and peft.
"""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

FAMILIES = ("qwen3", "qwen3_moe", "llama3", "qwen2")
MOE = "--moe-aux-loss-coeff 0"
LAYOUTS = {"tp2": "--tensor-model-parallel-size 2", "pp2": "--pipeline-model-parallel-size 2",
           "ep2": "--expert-model-parallel-size 2"}
LORA = "--peft lora --lora-rank 4 --lora-alpha 8"


def runs() -> dict[str, tuple[str, str]]:
    """name -> (family, flags): each family at TP=2 and PP=2, the MoE also at EP=2; LoRA; the bf16 default."""
    out = {}
    for family in FAMILIES:
        for name, flags in LAYOUTS.items():
            if name != "ep2" or family == "qwen3_moe":
                extra = f" {MOE}" if family == "qwen3_moe" else ""
                extra += " --sequence-parallel" if family == "qwen3_moe" and name == "tp2" else ""
                out[f"{family}_{name}"] = (family, f"{flags} --save-hf-dtype fp32{extra}")
    out["lora_tp2"] = ("qwen3", f"{LAYOUTS['tp2']} {LORA} --merge-lora --save-hf-dtype fp32")
    # PP2: TP 1 inside each stage, where the merge must not write into the live weights
    out["lora_pp2"] = ("qwen3", f"{LAYOUTS['pp2']} {LORA} --merge-lora --save-hf-dtype fp32")
    out["bf16_tp2"] = ("qwen3", LAYOUTS["tp2"])  # the default export dtype
    out["qwen3_cp2"] = ("qwen3", "--context-parallel-size 2 --save-hf-dtype fp32")
    # experts not split over TP while the dense layers are (expert TP 1 < TP 2): the expert gathers use their own group
    out["qwen3_moe_tp2_ep2_etp1"] = ("qwen3_moe", f"{LAYOUTS['tp2']} {LAYOUTS['ep2']} --expert-tensor-parallel-size 1 "
                                                  f"--sequence-parallel {MOE} --save-hf-dtype fp32")
    only = os.environ.get("SAVE_HF_ONLY")  # debugging: a comma-separated subset
    return {k: v for k, v in out.items() if k in only.split(",")} if only else out


def common(model: Path, cli) -> str:
    return (f"--load {model} --data-path {cli.data} --data-cache-dir {cli.out / 'cache'} --device cpu "
            "--seq-length 64 --global-batch-size 4 --lr 1e-2 --min-lr 1e-3 --lr-decay-style cosine "
            "--log-interval 1000 --split 100,0,0 --seed 7 --distributed-timeout-minutes 3")


def with_runtime(flags: str):
    from megatron_sft.arguments import parse_args
    from megatron_sft.runtime.distributed import init_from_args

    return init_from_args(parse_args(shlex.split(f"{flags} --device cpu --distributed-timeout-minutes 3")))


def train_all(cli) -> None:
    from megatron_sft.arguments import parse_args
    from megatron_sft.training.loop import start_training

    for name, (family, flags) in runs().items():
        save = cli.out / "ckpt" / name
        # periodic saves at iteration 2: with --save-hf it gets hf/ too, with --save-hf final only iteration 3 does
        mode = {"qwen3_tp2": "--save-interval 2", "llama3_pp2": "final --save-interval 2"}.get(name, "")
        start_training(parse_args(shlex.split(
            f"{common(cli.models / family, cli)} {flags} --train-iters 3 --save {save} --save-hf {mode}"))).run()


def rejected_run(cli) -> None:
    """An export whose logits disagree (the check is shown transformers' logits + 1): the run must stop with one
    line, leave hf.rejected/ and no hf/, and keep the Megatron checkpoint. Rank 0 writes OUT/rejected.txt. Then
    the same command again, unpatched: nothing to train, and the missing hf/ is written."""
    from megatron_sft.arguments import parse_args
    from megatron_sft.errors import UserError
    from megatron_sft.training import hf_parity
    from megatron_sft.training.loop import start_training

    real = hf_parity._hf_logits
    hf_parity._hf_logits = lambda *args: real(*args) + 1.0
    message = "no error"
    try:
        start_training(parse_args(shlex.split(f"{common(cli.models / 'qwen3', cli)} --train-iters 3 --save "
                                              f"{cli.out / 'ckpt' / 'rejected'} --save-hf"))).run()
    except UserError as err:
        message = str(err)
    finally:
        hf_parity._hf_logits = real
    if int(os.environ["RANK"]) == 0:
        (cli.out / "rejected.txt").write_text(message)
    # started again (it resumes, finished): the last checkpoint gets the Hugging Face directory it lacks
    ckpt = cli.out / "ckpt" / "rejected"
    start_training(parse_args(shlex.split(f"{common(ckpt, cli)} --train-iters 3 --save {ckpt} --save-hf"))).run()


def unperturbed(cli) -> None:
    """The same LoRA run (PP 2, so TP 1 per stage) with an export and merge after every step, and without any save:
    rank 0 writes both runs' per-step loss and grad norm to OUT/unperturbed.json (they must be equal)."""
    import json

    from megatron_sft.arguments import parse_args
    from megatron_sft.training.loop import start_training

    base = f"{common(cli.models / 'qwen3', cli)} {LAYOUTS['pp2']} {LORA} --train-iters 3"
    runs = {}
    for name, extra in (("exported", f"--save {cli.out / 'ckpt' / 'every_step'} --save-interval 1 --save-hf "
                                     "--merge-lora"), ("plain", "")):
        trainer = start_training(parse_args(shlex.split(f"{base} {extra}")))
        trainer.run()
        runs[name] = [[r["loss"], r["grad_norm"]] for r in trainer.records]
    if int(os.environ["RANK"]) == 0:
        (cli.out / "unperturbed.json").write_text(json.dumps(runs))


def references(cli) -> None:
    """The checkpoint's own logits (dist_checkpointing resharded to TP=1), convert.py's export of it (the project's
    writer, here at TP=1) and, for full models, nvidia-modelopt's Megatron exporter's: an independent writer."""
    import torch

    from megatron_sft.checkpointing.hf import export_hf_weights
    from megatron_sft.conversion import convert
    from megatron_sft.inference.logits import forward_logits
    from megatron_sft.loading import build_and_load, hf_assets_source

    tokens = torch.load(cli.out / "tokens.pt")
    for name, (family, flags) in runs().items():
        ckpt = cli.out / "ckpt" / name
        (cli.out / "logits").mkdir(exist_ok=True)
        cfg = with_runtime(f"--load {ckpt}")
        chunks = build_and_load(cfg)
        torch.save(forward_logits(chunks, tokens), cli.out / "logits" / f"{name}.pt")
        dtype = "bf16" if name.startswith("bf16") else "fp32"
        if not name.startswith("lora"):
            export_hf_weights(chunks, hf_assets_source(cfg), cli.out / "modelopt" / name,
                              torch.bfloat16 if dtype == "bf16" else torch.float32)
        merge = "--merge-lora" if name.startswith("lora") else ""
        convert(with_runtime(f"--load {ckpt} --save {cli.out / 'convert' / name} --export-dtype {dtype} {merge}"))


def main() -> None:
    parser = argparse.ArgumentParser()
    for flag in ("--models", "--data", "--out"):
        parser.add_argument(flag, type=Path, required=True)
    cli = parser.parse_args()
    if int(os.environ["WORLD_SIZE"]) == 2:
        train_all(cli)
        rejected_run(cli)
        unperturbed(cli)
    else:
        references(cli)
    from megatron_sft.runtime.distributed import shutdown

    shutdown()


if __name__ == "__main__":  # dist_checkpointing's spawned saver re-imports this file
    main()
