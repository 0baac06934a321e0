"""The supervised-token chunked LM head against full logits, in one run: peak memory and step time.

    python tools/bench_lm_head.py [--steps 3] [--cases small-2048,small-8192,qwen3-0.6b-4096]

Each case trains a randomly initialised Qwen3-shape model from examples/finetune.py's start-up path for a few
steps twice, with --lm-head-chunk-size 0 (Megatron's output layer on every token, then the masked
cross-entropy) and with the default chunk size, each in its own process so peak RSS is its own. Chat data with
about two thirds of the tokens supervised (short user turns, long answers), packed, micro-batch 1, fp32, CPU,
one process (Qwen3-0.6B with full activation recomputation, to fit 24 GB). Prints peak RSS, RSS growth during the steps (activations, logits, gradients) and the median
step time (the first step is left out), with new / today ratios.

Shapes: `small` is Qwen3 with the real Qwen vocabulary (151,936), hidden 512, 4 layers (8 heads of 64 in 4
groups, FFN 1536): the LM head is most of its work. `qwen3-0.6b` is Qwen3-0.6B's config (28 layers).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SHAPES = {
    "small": dict(num_hidden_layers=4, hidden_size=512, intermediate_size=1536, num_attention_heads=8,
                  num_key_value_heads=4, head_dim=64),
    "qwen3-0.6b": dict(num_hidden_layers=28, hidden_size=1024, intermediate_size=3072, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128),
}
COMMON = dict(vocab_size=151936, max_position_embeddings=40960, rms_norm_eps=1e-6, tie_word_embeddings=True,
              rope_parameters={"rope_type": "default", "rope_theta": 1e6})
CASES = {"small-2048": ("small", 2048), "small-8192": ("small", 8192), "qwen3-0.6b-4096": ("qwen3-0.6b", 4096)}
# 28 layers of activations at 4096 tokens do not fit next to fp32 Adam state in 24 GB: recompute them (both paths).
RECOMPUTE = {"qwen3-0.6b": "--recompute-granularity full --recompute-method uniform --recompute-num-layers 1"}


def make_model(out: Path, shape: str) -> Path:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from megatron_sft.tiny.tokenizer import make_tiny_tokenizer

    if not (out / "config.json").is_file():
        torch.manual_seed(0)
        Qwen3ForCausalLM(Qwen3Config(dtype="float32", **SHAPES[shape], **COMMON)).save_pretrained(out)
        make_tiny_tokenizer("qwen3").save_pretrained(out)
    return out


def write_data(path: Path, n: int = 400) -> Path:
    """Conversations whose answers are about twice as long as the questions."""
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "kappa", "omega", "sigma", "theta"]
    with open(path, "w") as f:
        for _ in range(n):
            q = " ".join(rng.choice(words) for _ in range(rng.randint(20, 60)))
            a = " ".join(rng.choice(words) for _ in range(2 * len(q.split()) + 10))
            f.write(json.dumps({"messages": [{"role": "user", "content": q},
                                             {"role": "assistant", "content": a}]}) + "\n")
    return path


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def one(flags: str) -> dict:
    """One configuration in this process: RSS after start-up, peak RSS and step times."""
    from megatron_sft.arguments import parse_args
    from megatron_sft.training.loop import start_training

    trainer = start_training(parse_args(shlex.split(flags)))
    before = rss_bytes()
    trainer.run()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"rss_start": before, "peak": peak, "step_s": statistics.median(r["seconds"] for r in trainer.records[1:])}


def run_case(case: str, work: Path, steps: int) -> dict[str, dict]:
    shape, seq = CASES[case]
    model = make_model(work / shape, shape)
    data = work / "data.jsonl"
    flags = (f"--load {model} --data-path {data} --data-cache-dir {work / 'cache'} --device cpu "
             f"--seq-length {seq} --micro-batch-size 1 --global-batch-size 1 --train-iters {steps} --lr 1e-5 "
             f"--log-interval 1000 --split 100,0,0 --eval-iters 0 {RECOMPUTE.get(shape, '')}")
    out = {}
    for name, chunk in (("today", "0"), ("chunked", None)):
        extra = f" --lm-head-chunk-size {chunk}" if chunk else ""
        proc = subprocess.run([sys.executable, __file__, "--one", flags + extra], capture_output=True, text=True,
                              env={"OMP_NUM_THREADS": "2", "PATH": "/usr/bin:/bin", "PYTHONWARNINGS": "ignore"})
        if proc.returncode != 0:
            sys.exit(f"{case} {name} failed (exit {proc.returncode}; -9: killed, e.g. out of memory):\n"
                     f"{proc.stderr[-3000:]}")
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    cli = parser.parse_args()
    if cli.one:
        print(json.dumps(one(cli.one)))
        return
    from megatron_sft.config import field_default

    work = Path(tempfile.mkdtemp(prefix="bench_lm_head_"))
    write_data(work / "data.jsonl")
    print(f"CPU fp32, 1 process, micro-batch 1, {cli.steps} steps (median of all but the first); "
          f"chunked = --lm-head-chunk-size {field_default('lm_head_chunk_size')}")
    print(f"{'case':18}{'path':9}{'peak RSS GB':>12}{'growth GB':>11}{'s/step':>9}")
    for case in cli.cases.split(","):
        r = run_case(case, work, cli.steps)
        for name in ("today", "chunked"):
            x = r[name]
            print(f"{case:18}{name:9}{x['peak'] / 1e9:12.2f}{(x['peak'] - x['rss_start']) / 1e9:11.2f}"
                  f"{x['step_s']:9.2f}", flush=True)
        t, c = r["today"], r["chunked"]
        print(f"{case:18}{'ratio':9}{c['peak'] / t['peak']:12.3f}"
              f"{(c['peak'] - c['rss_start']) / max(t['peak'] - t['rss_start'], 1):11.3f}"
              f"{c['step_s'] / t['step_s']:9.3f}", flush=True)


if __name__ == "__main__":
    main()
