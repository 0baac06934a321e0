"""Training checks, several runs per launch (one launch per world size).

    torchrun --nproc_per_node=N training.py --models DIR --data FILE --out DIR

Rank 0 writes OUT/results_ws<N>.json: per named run, the figures of every step (loss, grad norm).
At world size 1 it also writes the first global batch of the reference run for the test to
recompute the loss with transformers.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
from pathlib import Path

TUTORIAL = (  # the reference tutorial's torchrun flags; only tiny-model values and paths differ
    "--bf16 --no-masked-softmax-fusion --disable-bias-linear --position-embedding-type rope --no-rope-fusion "
    "--normalization RMSNorm --swiglu --num-layers 4 --hidden-size 64 --ffn-hidden-size 128 "
    "--num-attention-heads 8 --group-query-attention --num-query-groups 4 --kv-channels 16 --qk-layernorm "
    "--seq-length 128 --max-position-embeddings 2048 --tokenizer-type HuggingFaceTokenizer "
    "--tokenizer-model {model} --make-vocab-size-divisible-by 128 --use-mcore-models --rotary-percent 1.0 "
    "--rotary-base 1000000 --no-bias-swiglu-fusion --tensor-model-parallel-size 1 --pipeline-model-parallel-size 1 "
    "--micro-batch-size 1 --train-samples 8 --lr-decay-samples 8 --lr-warmup-samples 0 --split 100,0,0 "
    "--finetune-hf-dataset {data} --lr 5.0e-6 --min-lr 1.0e-7 "
    "--lr-decay-style cosine --clip-grad 1.0 --weight-decay 0.0 --adam-beta1 0.9 --adam-beta2 0.95 "
    "--use-distributed-optimizer --no-gradient-accumulation-fusion --reset-position-ids --reset-attention-mask "
    "--eod-mask-loss --attention-dropout 0.0 --hidden-dropout 0.0 --no-check-for-nan-in-loss-and-grad "
    "--eval-iters 1 --eval-interval 1000 --save-interval 1000 --log-interval 100 --auto-detect-ckpt-format "
    "--export-te-mcore-model --finetune --load {model} --save {save}"
)

# name -> (world size, flags); GBS 4 everywhere, so every run sees the same global batch.
LAYOUTS = {
    "tp1pp1dp1_mb4": (1, "--micro-batch-size 1"),
    "tp1pp1dp1_mb1": (1, "--micro-batch-size 4"),
    "tp2": (2, "--tensor-model-parallel-size 2"),
    "tp2_sp": (2, "--tensor-model-parallel-size 2 --sequence-parallel"),
    "pp2": (2, "--pipeline-model-parallel-size 2"),
    "dp2": (2, "--use-distributed-optimizer"),
    "tp2pp2": (4, "--tensor-model-parallel-size 2 --pipeline-model-parallel-size 2"),
    "pp4": (4, "--pipeline-model-parallel-size 4"),
    "pp2_vp2": (2, "--pipeline-model-parallel-size 2 --num-layers-per-virtual-pipeline-stage 1"),
    "moe_ep1_dp2": (2, "--moe-aux-loss-coeff 0"),
    "moe_ep2_dp2": (2, "--moe-aux-loss-coeff 0 --expert-model-parallel-size 2"),
    "local_mb4": (1, "--micro-batch-size 1 --attention-backend local"),
}

# Context parallelism: 3 steps each, against CP=1. Every CP run pads samples to 8 tokens (2 x the
# largest CP): padding changes how samples pack, so with it fixed all runs see the same batches.
CP_PAD = 8
CP_LAYOUTS = {
    "cp1": (1, ""),
    "cp2": (2, "--context-parallel-size 2"),
    "cp2tp2": (4, "--context-parallel-size 2 --tensor-model-parallel-size 2"),
    "cp2pp2": (4, "--context-parallel-size 2 --pipeline-model-parallel-size 2"),
    "cp4": (4, "--context-parallel-size 4"),
    "cp2tp2_sp": (4, "--context-parallel-size 2 --tensor-model-parallel-size 2 --sequence-parallel"),
    "cp2dp2": (4, "--context-parallel-size 2"),
}


def common(model: Path, data: Path, cache: Path) -> str:
    return (f"--load {model} --data-path {data} --data-cache-dir {cache} --device cpu --seq-length 64 "
            "--global-batch-size 4 --lr 1e-3 --min-lr 1e-4 --lr-decay-style cosine --log-interval 1000 "
            "--split 100,0,0 --seed 7 --distributed-timeout-minutes 3")


def train(flags: str, capture: list | None = None) -> list[dict]:
    from megatron_sft.arguments import parse_args
    from megatron_sft.training.loop import start_training

    args = parse_args(shlex.split(flags))
    trainer = start_training(args)
    if capture is not None:  # record the global batches this rank trains on
        original = trainer.next_global_batch
        trainer.next_global_batch = lambda: capture.append(original()) or capture[-1]
    trainer.run()
    return [{"loss": r["loss"], "grad_norm": r["grad_norm"]} for r in trainer.records]


def watch_attention_queries() -> list:
    """Record, for every packed attention call, (local query tokens, global tokens of the stream)."""
    from megatron_sft.models.attention import PackedSDPAttention

    seen: list = []
    original = PackedSDPAttention._forward_thd

    def recording(self, query, key, value, params):
        seen.append((int(query.shape[0]), int(params.cu_seqlens_q_padded[-1])))
        return original(self, query, key, value, params)

    PackedSDPAttention._forward_thd = recording
    return seen


def validation_run(cli, results: dict) -> None:
    """--train-data-path + --valid-data-path, weights unchanged (lr 0): the logged validation loss and the
    validation micro-batches it came from, for the test to recompute with transformers."""
    import torch

    from megatron_sft.arguments import parse_args
    from megatron_sft.training.loop import start_training

    flags = (f"--load {cli.models / 'qwen3'} --train-data-path {cli.data} --valid-data-path {cli.long_data} "
             f"--data-cache-dir {cli.out / 'cache'} --device cpu --seq-length 64 --global-batch-size 4 --lr 0 "
             "--train-iters 1 --eval-iters 1000 --log-interval 1000 --seed 7")
    args = parse_args(shlex.split(flags))
    trainer = start_training(args)
    seen = []
    collate = trainer.data.valid.collate
    trainer.data.valid.collate = lambda rows: seen.append(collate(rows)) or seen[-1]
    trainer.run()
    torch.save(seen, cli.out / "validation_batches.pt")
    results["validation"] = {"loss": trainer.eval_history[-1][1], "packs": trainer.data.valid.packs_per_epoch}


def cp_runs(ws: int, cli, results: dict) -> None:
    """Each CP layout for 3 steps, with what every rank's attention saw; at CP=2 an exact resume."""
    import torch

    from megatron_sft.config import DataConfig

    DataConfig.cp_multiple = property(lambda self: CP_PAD)
    base = f"{common(cli.models / 'qwen3', cli.data, cli.out / 'cp_cache')} --micro-batch-size 2 " \
           "--use-distributed-optimizer"
    seen = watch_attention_queries()
    for name, (size, flags) in CP_LAYOUTS.items():
        if size == ws:
            seen.clear()
            capture = [] if name == "cp1" else None
            results[name] = train(f"{base} {flags} --train-iters 3", capture)
            if capture:  # real sample lengths, to show they are not all multiples of 2 x CP
                from megatron_sft.training.metrics import sample_lengths

                results["cp_sample_lengths"] = [n for batches in capture for mb in batches for n in sample_lengths(mb)]
            per_rank = [None] * ws
            torch.distributed.all_gather_object(per_rank, sorted(set(seen)))
            results[f"{name}_queries"] = per_rank
    if ws == 2:
        cp2 = f"{base} --context-parallel-size 2"
        ckpt = cli.out / "cp_resume_ckpt"
        results["cp2_straight6"] = train(f"{cp2} --train-iters 6")
        results["cp2_first3"] = train(f"{cp2} --train-iters 6 --exit-interval 3 --save {ckpt}")
        results["cp2_resumed3"] = train(f"{cp2.replace(str(cli.models / 'qwen3'), str(ckpt))} --train-iters 6")


def layout_runs(ws: int, cli, results: dict) -> None:
    for name, (size, flags) in LAYOUTS.items():
        if size != ws:
            continue
        model = cli.models / ("qwen3_moe" if name.startswith("moe") else "qwen3")
        capture = [] if name == "tp1pp1dp1_mb4" else None
        results[name] = train(f"{common(model, cli.data, cli.out / 'cache')} {flags} --train-iters 1", capture)
        if capture:
            import torch

            torch.save(capture[0], cli.out / "first_global_batch.pt")


def resume_runs(ws: int, cli, results: dict) -> None:
    """20 straight vs 10 + resume 10 (DP=2); at DP=1, resume the DP=2 checkpoint for one step."""
    base = f"{common(cli.models / 'qwen3', cli.data, cli.out / 'cache')} --use-distributed-optimizer"
    if ws == 2:
        results["straight20"] = train(f"{base} --train-iters 20")
        ckpt = cli.out / "resume_ckpt"
        results["first10"] = train(f"{base} --train-iters 20 --exit-interval 10 --save {ckpt}")
        results["resumed10"] = train(f"{base.replace(str(cli.models / 'qwen3'), str(ckpt))} --train-iters 20")
    if ws == 1:
        ckpt = cli.out / "resume_ckpt"
        results["dp1_resumes_dp2"] = train(
            f"{base.replace(str(cli.models / 'qwen3'), str(ckpt))} --train-iters 11")


def diverge(cli) -> str:
    """An absurd learning rate: the run must stop at the first non-finite loss, saving nothing more."""
    from megatron_sft.training.loop import TrainingDiverged

    flags = (f"{common(cli.models / 'qwen3', cli.data, cli.out / 'cache')} --lr 1e30 --min-lr 1e30 "
             f"--lr-decay-style constant --train-iters 6 --save-interval 1 --save {cli.out / 'nan_ckpt'}")
    try:
        train(flags)
    except TrainingDiverged as e:
        return str(e)
    return "no error"


def main() -> None:
    parser = argparse.ArgumentParser()
    for flag in ("--models", "--data", "--out"):
        parser.add_argument(flag, type=Path, required=True)
    parser.add_argument("--long-data", type=Path)
    cli = parser.parse_args()
    ws = int(os.environ["WORLD_SIZE"])
    results: dict = {}
    layout_runs(ws, cli, results)
    resume_runs(ws, cli, results)
    if ws == 1:
        results["learn"] = train(f"{common(cli.models / 'qwen3', cli.long_data, cli.out / 'cache')} "
                                 "--train-iters 60 --lr 3e-3 --lr-warmup-iters 5")
        results["nan"] = diverge(cli)
        tutorial = TUTORIAL.format(model=cli.models / "qwen3", data=cli.data, save=cli.out / "tutorial_ckpt")
        os.environ["HOME"] = str(cli.out / "home")  # the default data cache lands here, not in the real home
        results["tutorial"] = train(tutorial)  # nothing added: device and cache dir are the defaults
        validation_run(cli, results)
    cp_runs(ws, cli, results)  # last: it changes how samples are padded
    if int(os.environ["RANK"]) == 0:
        (cli.out / f"results_ws{ws}.json").write_text(json.dumps(results, indent=1))
    from megatron_sft.runtime.distributed import shutdown

    shutdown()


if __name__ == "__main__":  # dist_checkpointing's spawned saver re-imports this file
    main()
