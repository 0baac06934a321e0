"""Training throughput on one device: real tokens/s, MFU and peak memory, per attention backend.

    python tools/bench_gpu.py --seq-length 4096 --backend auto [--shape qwen3-0.6b] [--profile]

Builds a randomly initialised model of the given shape (Qwen3-0.6B by default: 28 layers, hidden
1024, 16 heads / 8 groups, head dim 128, FFN 3072, vocabulary 151936), bf16 with fp32 main
params, TP=1, and trains it on packs of realistic conversation lengths: log-normal, median 350
tokens, sigma 1, clipped to [16, 4096] (the mix of tools/bench_data.py), packed best-fit into
--seq-length. Reports real (non-padding) tokens/s, MFU from Megatron's FLOP formula with the
attention term over the real sample lengths (known peaks only: H100/H200 989 TFLOP/s dense bf16),
and peak device memory. `--profile` prints the top kernels of one iteration (torch.profiler).
Run one configuration per process: peak memory is per process. `--shape tiny` runs anywhere
(CPU included) to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import tempfile
import time
from pathlib import Path

SHAPES = {
    "qwen3-0.6b": "--num-layers 28 --hidden-size 1024 --ffn-hidden-size 3072 --num-attention-heads 16 "
                  "--num-query-groups 8 --kv-channels 128",
    "tiny": "--num-layers 2 --hidden-size 128 --ffn-hidden-size 384 --num-attention-heads 8 "
            "--num-query-groups 4 --kv-channels 16",
}
VOCAB = {"qwen3-0.6b": 151936, "tiny": 512}


def realistic_packs(seq_length: int, n_packs: int, vocab: int, seed: int = 0) -> list[dict]:
    """Packed rows of log-normal sample lengths (median 350, sigma 1, in [16, 4096])."""
    import numpy as np

    from megatron_sft.data.batch import build_pack
    from megatron_sft.data.packing import pack

    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(350), 1.0, 40 * n_packs), 16, min(4096, seq_length)).astype(np.int64)
    offsets, order = pack(lengths, seq_length, "best_fit")
    rows = []  # a random subset of the bins: the first ones of best-fit decreasing hold the longest samples
    for i in rng.choice(len(offsets) - 1, size=min(n_packs, len(offsets) - 1), replace=False):
        samples = [(rng.integers(10, vocab - 10, int(lengths[s])), np.ones(int(lengths[s]), dtype=bool))
                   for s in order[offsets[i]:offsets[i + 1]]]
        rows.append(build_pack(samples, seq_length, pad_id=0))
    return rows


def build_trainer(cli, work: Path):
    from megatron_sft.arguments import parse_args
    from megatron_sft.tiny import make_tiny_model
    from megatron_sft.training.loop import start_training

    tok = make_tiny_model("qwen3", work / "tok")
    data = work / "data.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n")
    import torch

    dtype = "--bf16" if cli.device != "cpu" and torch.cuda.is_available() else ""
    args = parse_args(shlex.split(
        f"--tokenizer-model {tok} --data-path {data} --device {cli.device} {SHAPES[cli.shape]} "
        f"--group-query-attention --qk-layernorm --swiglu --normalization RMSNorm --norm-epsilon 1e-6 "
        f"--disable-bias-linear --position-embedding-type rope --rotary-base 1000000 {dtype} "
        f"--seq-length {cli.seq_length} --max-position-embeddings {max(cli.seq_length, 40960)} "
        f"--micro-batch-size 1 --global-batch-size {cli.micro_batches} --lr 1e-5 --train-iters 1000000 "
        f"--log-interval 1000000 --split 100,0,0 --data-cache-dir {work / 'cache'} --hidden-dropout 0 "
        f"--attention-dropout 0 --attention-backend {cli.backend} --use-distributed-optimizer"))
    return start_training(args.replace(padded_vocab_size=VOCAB[cli.shape]))  # the real model's vocabulary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-length", type=int, default=4096)
    parser.add_argument("--backend", choices=["auto", "local"], default="auto")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-0.6b")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--micro-batches", type=int, default=8, help="packs per iteration (global batch)")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations, after 2 warm-up ones")
    parser.add_argument("--profile", action="store_true", help="print the top kernels of one iteration")
    cli = parser.parse_args()

    import torch

    work = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    trainer = build_trainer(cli, work)
    packs = realistic_packs(cli.seq_length, cli.micro_batches * 4, VOCAB[cli.shape])
    from megatron_sft.data.batch import collate

    batches = [collate([p]) for p in packs]
    step = iter(range(10**9))
    trainer.next_global_batch = lambda: [batches[(next(step) * cli.micro_batches + i) % len(batches)]
                                         for i in range(cli.micro_batches)]
    for _ in range(2):
        trainer.step()
    cuda = torch.cuda.is_available() and trainer.cfg.device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    figures = []
    for _ in range(cli.iters):
        figures.append(trainer.step())
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    tps = statistics.median(f["tokens_per_s"] for f in figures)
    mfu = [f["mfu"] for f in figures if f["mfu"] is not None]
    fill = sum(int(p["cu_seqlens"][-1]) - int(p["num_padding"]) for p in packs) / (len(packs) * cli.seq_length)
    device = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"{cli.shape}, {device}, {'bf16' if cuda else 'fp32'}, seq {cli.seq_length}, backend {cli.backend}, "
          f"{cli.micro_batches} packs/iteration (fill {fill:.1%}), median of {cli.iters} iterations:")
    print(f"  {tps:,.0f} real tokens/s | {statistics.median(f['seconds'] for f in figures):.3f} s/iteration | "
          f"MFU {statistics.median(mfu):.1%}" if mfu else f"  {tps:,.0f} real tokens/s | MFU n/a (peak unknown)")
    print(f"  peak memory allocated: {peak:.2f} GiB" if cuda else "  peak memory: n/a on CPU")
    if cli.profile:
        profile(trainer, cuda)


def profile(trainer, cuda: bool) -> None:
    import torch
    from torch.profiler import ProfilerActivity

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        t0 = time.perf_counter()
        trainer.step()
        if cuda:
            torch.cuda.synchronize()
    print(f"profiled iteration: {time.perf_counter() - t0:.3f} s")
    key = "cuda_time_total" if cuda else "cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=60))


if __name__ == "__main__":
    main()
