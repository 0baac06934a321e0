"""Packed attention: memory and time per training iteration against the pack length, one run.

    python tools/bench_attention.py [--lengths 2048 8192 16384 32768] [--local-length 8192]

Trains a 2-layer, hidden-128, 8-head (4 query groups) Qwen3-shaped model on the CPU, one process
per (backend, length) so each peak RSS is its own. Every micro-batch is one pack of 4 samples of
equal length (all tokens supervised). `auto` is the default backend (one THD stream, per-sample
SDPA); `local` is Megatron's DotProductAttention with the explicit S x S mask, run at one length
for the speed ratio. Prints per length: peak RSS, seconds per iteration; then the memory growth
exponent between the two longest lengths (memory above the shortest length's), and the ratio
local / auto at --local-length. Goals (issue 10): exponent <= 1.2, the longest (32768) under 4 GiB,
auto >= 10x faster than local at 8192.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLES_PER_PACK = 4


def child(seq_length: int, backend: str, iters: int, work: Path) -> dict:
    """Train `iters` iterations (plus one warm-up) in this process; report peak RSS and s/iteration."""
    import torch

    from megatron_sft.arguments import parse_args
    from megatron_sft.data.batch import build_pack, collate
    from megatron_sft.tiny import make_tiny_model
    from megatron_sft.training.loop import start_training

    tok = make_tiny_model("qwen3", work / f"tok_{seq_length}_{backend}")
    data = work / "data.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n")
    args = parse_args(shlex.split(
        f"--tokenizer-model {tok} --data-path {data} --device cpu --num-layers 2 --hidden-size 128 "
        f"--ffn-hidden-size 384 --num-attention-heads 8 --group-query-attention --num-query-groups 4 "
        f"--kv-channels 16 --qk-layernorm --swiglu --normalization RMSNorm --disable-bias-linear "
        f"--position-embedding-type rope --seq-length {seq_length} --max-position-embeddings {seq_length} "
        f"--micro-batch-size 1 --global-batch-size 1 --lr 1e-4 --train-iters 1000 --log-interval 1000000 "
        f"--split 100,0,0 --data-cache-dir {work / 'cache'} --hidden-dropout 0 --attention-dropout 0 "
        f"--attention-backend {backend}"))
    trainer = start_training(args)
    g = torch.Generator().manual_seed(0)
    n = seq_length // SAMPLES_PER_PACK
    samples = [(torch.randint(10, 500, (n,), generator=g).numpy(), torch.ones(n, dtype=torch.bool).numpy())
               for _ in range(SAMPLES_PER_PACK)]
    batch = collate([build_pack(samples, seq_length, pad_id=0)])
    trainer.next_global_batch = lambda: [batch]
    trainer.step()  # warm-up
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        trainer.step()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"seq_length": seq_length, "backend": backend, "peak_bytes": peak, "seconds": statistics.median(times)}


def run_child(seq_length: int, backend: str, iters: int, work: Path) -> dict:
    out = work / f"result_{backend}_{seq_length}.json"
    cmd = [sys.executable, __file__, "--child", "--seq-length", str(seq_length), "--backend", backend,
           "--iters", str(iters), "--work", str(work), "--result", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{backend} at {seq_length} failed:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def report(results: list[dict], local: dict | None) -> None:
    gib = 2**30
    print(f"model: 2 layers, hidden 128, 8 heads (4 groups), packs of {SAMPLES_PER_PACK} equal samples, CPU, "
          f"1 process per length; load average {os.getloadavg()[0]:.2f}")
    print(f"{'backend':8} {'seq':>6} {'peak RSS':>10} {'s/iteration':>12}")
    for r in results + ([local] if local else []):
        print(f"{r['backend']:8} {r['seq_length']:6d} {r['peak_bytes'] / gib:8.2f} GiB {r['seconds']:12.3f}")
    base = results[0]["peak_bytes"]
    (s1, m1), (s2, m2) = [(r["seq_length"], r["peak_bytes"] - base) for r in results[-2:]]
    if len(results) >= 3 and m1 > 0 and m2 > 0:
        exponent = math.log(m2 / m1) / math.log(s2 / s1)
        print(f"auto: memory above seq {results[0]['seq_length']} grows as seq^{exponent:.2f} between {s1} and "
              f"{s2} (goal <= 1.2)")
    print(f"auto at seq {s2}: peak {results[-1]['peak_bytes'] / gib:.2f} GiB (goal < 4 GiB)")
    if local:
        auto = next(r for r in results if r["seq_length"] == local["seq_length"])
        print(f"seq {local['seq_length']}: local {local['seconds']:.2f} s vs auto {auto['seconds']:.3f} s per "
              f"iteration -> auto is {local['seconds'] / auto['seconds']:.1f}x faster (goal >= 10x); peak "
              f"{local['peak_bytes'] / gib:.2f} vs {auto['peak_bytes'] / gib:.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 16384, 32768])
    parser.add_argument("--local-length", type=int, default=8192, help="0: skip the local backend")
    parser.add_argument("--iters", type=int, default=2, help="timed iterations per length (after 1 warm-up)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seq-length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    cli = parser.parse_args()
    if cli.child:
        cli.result.write_text(json.dumps(child(cli.seq_length, cli.backend, cli.iters, cli.work)))
        return
    work = Path(tempfile.mkdtemp(prefix="bench_attention_"))
    results = []
    for length in sorted(cli.lengths):
        results.append(run_child(length, "auto", cli.iters, work))
        print(f"  auto {length}: {results[-1]['seconds']:.3f} s/iteration", file=sys.stderr, flush=True)
    local = run_child(cli.local_length, "local", max(1, cli.iters - 1), work) if cli.local_length else None
    report(results, local)


if __name__ == "__main__":
    main()
