"""Distillation's chunked KL against full-logits KL, in one run: peak memory and step time.

    python tools/bench_kd.py [--steps 3] [--seq-length 8192] [--vocab 32768]

A randomly initialised Qwen3-shape student distils from a teacher of the same shape (another seed) for a few steps
twice, from examples/finetune.py's start-up path: with --lm-head-chunk-size 0 (both models' output layers on every
token, modelopt's LogitsKLLoss on the whole [tokens x vocab] logits, as Megatron-LM computes it) and with the default
chunk size (the supervised tokens' KL a chunk at a time, training/kd_loss.py), each in its own process so peak RSS is
its own. Chat data with about two thirds of the tokens supervised, packed, micro-batch 1, fp32, CPU, one process.
Prints peak RSS, its growth during the steps and the median step time (first step left out), with chunked / full
ratios.

The shape is vocabulary-heavy: hidden 256, 2 layers, the vocabulary --vocab (32,768 by default: Llama 2 and Mistral's
size; whole logits of Qwen's 151,936 at 8,192 tokens are 5 GB per copy, and the full-logits path keeps several copies
for each model, more than this 24 GB machine has).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_lm_head import rss_bytes, write_data  # the sibling tool (this script's directory is on the path)

SHAPE = dict(num_hidden_layers=2, hidden_size=256, intermediate_size=768, num_attention_heads=4,
             num_key_value_heads=2, head_dim=64, max_position_embeddings=40960, rms_norm_eps=1e-6,
             tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1e6})


def make_model(out: Path, vocab: int, seed: int) -> Path:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from megatron_sft.tiny.tokenizer import make_tiny_tokenizer

    if not (out / "config.json").is_file():
        torch.manual_seed(seed)
        Qwen3ForCausalLM(Qwen3Config(dtype="float32", vocab_size=vocab, **SHAPE)).save_pretrained(out)
        make_tiny_tokenizer("qwen3").save_pretrained(out)
    return out


def one(flags: str) -> dict:
    """One configuration in this process: RSS after start-up, peak RSS and step times."""
    import resource

    from megatron_sft.apps import parse
    from megatron_sft.run_finetune import _objective
    from megatron_sft.startup import start

    cfg, trainer_class = _objective(parse("finetune", shlex.split(flags)))
    trainer = trainer_class(start(cfg, training=True))
    before = rss_bytes()
    trainer.run()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"rss_start": before, "peak": peak, "step_s": statistics.median(r["seconds"] for r in trainer.records[1:]),
            "kd_loss": trainer.records[-1]["kd_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seq-length", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    cli = parser.parse_args()
    if cli.one:
        print(json.dumps(one(cli.one)))
        return
    from megatron_sft.config import field_default

    work = Path(tempfile.mkdtemp(prefix="bench_kd_"))
    data = write_data(work / "data.jsonl")
    student, teacher = make_model(work / "student", cli.vocab, 0), make_model(work / "teacher", cli.vocab, 1)
    flags = (f"--load {student} --export-kd-teacher-load {teacher} --data-path {data} --data-cache-dir "
             f"{work / 'cache'} --device cpu --seq-length {cli.seq_length} --micro-batch-size 1 --global-batch-size 1 "
             f"--train-iters {cli.steps} --lr 1e-5 --log-interval 1000 --split 100,0,0 --eval-iters 0")
    print(f"CPU fp32, 1 process, vocabulary {cli.vocab}, hidden 256, 2 layers (student and teacher), "
          f"{cli.seq_length} tokens per step, {cli.steps} steps (median of all but the first); chunked = "
          f"--lm-head-chunk-size {field_default('lm_head_chunk_size')}")
    results = {}
    for name, chunk in (("full", "0"), ("chunked", None)):
        extra = f" --lm-head-chunk-size {chunk}" if chunk else ""
        proc = subprocess.run([sys.executable, __file__, "--one", flags + extra], capture_output=True, text=True,
                              env={"OMP_NUM_THREADS": "2", "PATH": "/usr/bin:/bin", "PYTHONWARNINGS": "ignore"})
        if proc.returncode != 0:
            sys.exit(f"{name} failed (exit {proc.returncode}; -9: killed, e.g. out of memory):\n{proc.stderr[-3000:]}")
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{'path':9}{'peak RSS GB':>12}{'growth GB':>11}{'s/step':>9}{'kd_loss':>12}")
    for name, x in results.items():
        print(f"{name:9}{x['peak'] / 1e9:12.2f}{(x['peak'] - x['rss_start']) / 1e9:11.2f}{x['step_s']:9.2f}"
              f"{x['kd_loss']:12.6f}")
    f, c = results["full"], results["chunked"]
    print(f"{'ratio':9}{c['peak'] / f['peak']:12.3f}{(c['peak'] - c['rss_start']) / max(f['peak'] - f['rss_start'], 1):11.3f}"
          f"{c['step_s'] / f['step_s']:9.3f}")


if __name__ == "__main__":
    main()
