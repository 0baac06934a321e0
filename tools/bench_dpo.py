"""A DPO step against an SFT step on the same tokens, in one run: tokens per second and peak memory.

    python tools/bench_dpo.py [--steps 4] [--seq-lengths 2048,8192]

The same preference pairs are trained twice from the same randomly initialised Qwen3 model (--shape head-heavy:
hidden 512, 4 layers, where the LM head is most of the work; --shape qwen3-0.6b: Qwen3-0.6B's own shape; both with
Qwen's 151,936-token vocabulary), each in its own process so peak RSS is its own: with the dpo app (each
pair's chosen and rejected sequences side by side in a pack, the reference log-probs computed before training and
left out of the timing), and with the finetune app on the same sequences as SFT conversations (prompt + chosen and
prompt + rejected), packed the same way. fp32, CPU, one process, micro-batch 1, one pack per step. Prints the
median step time (the first step left out), tokens per second, peak RSS and its growth during training, and the
DPO / SFT ratios.
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

COMMON = dict(vocab_size=151936, max_position_embeddings=40960, rms_norm_eps=1e-6, tie_word_embeddings=True,
              rope_parameters={"rope_type": "default", "rope_theta": 1e6})
SHAPES = {
    # the LM head is most of a step here: the worst case for DPO's extra head pass
    "head-heavy": dict(num_hidden_layers=4, hidden_size=512, intermediate_size=1536, num_attention_heads=8,
                       num_key_value_heads=4, head_dim=64, **COMMON),
    # Qwen/Qwen3-0.6B's own shape (28 layers, hidden 1024), randomly initialised
    "qwen3-0.6b": dict(num_hidden_layers=28, hidden_size=1024, intermediate_size=3072, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, **COMMON),
}
WORDS = ["alpha", "beta", "gamma", "delta", "kappa", "omega", "sigma", "theta"]


def make_model(out: Path, shape: str) -> Path:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from megatron_sft.tiny.tokenizer import make_tiny_tokenizer

    if not (out / "config.json").is_file():
        torch.manual_seed(0)
        Qwen3ForCausalLM(Qwen3Config(dtype="float32", **SHAPES[shape])).save_pretrained(out)
        make_tiny_tokenizer("qwen3").save_pretrained(out)
    return out


def write_data(work: Path, n: int = 200) -> tuple[Path, Path]:
    """Preference pairs (prompt, two answers about twice its length) and the same sequences as SFT records."""
    rng = random.Random(0)
    prefs, sft = work / "prefs.jsonl", work / "sft.jsonl"
    with open(prefs, "w") as fp, open(sft, "w") as fs:
        for _ in range(n):
            prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60)))
            answers = [" ".join(rng.choice(WORDS) for _ in range(2 * len(prompt.split()) + 10)) for _ in range(2)]
            fp.write(json.dumps({"prompt": prompt, "chosen": answers[0], "rejected": answers[1]}) + "\n")
            for answer in answers:
                fs.write(json.dumps({"messages": [{"role": "user", "content": prompt},
                                                  {"role": "assistant", "content": answer}]}) + "\n")
    return prefs, sft


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def one(app: str, flags: str) -> dict:
    """One run of `app` in this process: RSS when training starts, peak RSS, step times and tokens per step."""
    from megatron_sft.apps import parse
    from megatron_sft.startup import start

    cfg = parse(app, shlex.split(flags))
    if app == "dpo":
        from megatron_sft.training.dpo import _trainer_class, with_reference

        trainer = _trainer_class()(start(with_reference(cfg), training=True))  # the reference pass happens here
    else:
        from megatron_sft.training.loop import Trainer

        trainer = Trainer(start(cfg, training=True))
    before = rss_bytes()
    trainer.run()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    steps = trainer.records[1:]
    return {"rss_start": before, "peak": peak, "step_s": statistics.median(r["seconds"] for r in steps),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steps)}


def run_length(seq: int, work: Path, steps: int, shape: str) -> dict[str, dict]:
    model = make_model(work / shape, shape)
    prefs, sft = work / "prefs.jsonl", work / "sft.jsonl"
    base = (f"--load {model} --data-cache-dir {work / 'cache'} --device cpu --seq-length {seq} --micro-batch-size 1 "
            f"--global-batch-size 1 --train-iters {steps} --lr 1e-6 --log-interval 1000 --split 100,0,0 "
            "--eval-iters 0")
    out = {}
    for app, data in (("finetune", sft), ("dpo", prefs)):
        proc = subprocess.run([sys.executable, __file__, "--one", app, f"{base} --data-path {data}"],
                              capture_output=True, text=True,
                              env={"OMP_NUM_THREADS": "2", "PATH": "/usr/bin:/bin", "PYTHONWARNINGS": "ignore"})
        if proc.returncode != 0:
            sys.exit(f"seq {seq} {app} failed (exit {proc.returncode}; -9: killed, e.g. out of memory):\n"
                     f"{proc.stderr[-3000:]}")
        out[app] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seq-lengths", default="2048,8192")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="head-heavy",
                        help="head-heavy (hidden 512, 4 layers) or qwen3-0.6b (Qwen3-0.6B's shape)")
    parser.add_argument("--pairs", type=int, default=200,
                        help="preference pairs written (the untimed reference pass reads them all; enough for the "
                             "steps at the longest sequence)")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    cli = parser.parse_args()
    if cli.one:
        print(json.dumps(one(*cli.one)))
        return
    work = Path(tempfile.mkdtemp(prefix="bench_dpo_"))
    write_data(work, cli.pairs)
    print(f"{cli.shape} shape, CPU fp32, 1 process, one pack per step, {cli.steps} steps (median of all but the "
          "first)")
    print(f"{'seq':>6} {'run':9}{'tokens/s':>10}{'s/step':>9}{'peak RSS GB':>13}{'growth GB':>11}")
    for seq in (int(s) for s in cli.seq_lengths.split(",")):
        r = run_length(seq, work, cli.steps, cli.shape)
        for app in ("finetune", "dpo"):
            x = r[app]
            print(f"{seq:6} {app:9}{x['tokens_per_s']:10.0f}{x['step_s']:9.2f}{x['peak'] / 1e9:13.2f}"
                  f"{(x['peak'] - x['rss_start']) / 1e9:11.2f}", flush=True)
        s, d = r["finetune"], r["dpo"]
        print(f"{seq:6} {'dpo/sft':9}{d['tokens_per_s'] / s['tokens_per_s']:10.3f}{d['step_s'] / s['step_s']:9.3f}"
              f"{d['peak'] / s['peak']:13.3f}"
              f"{(d['peak'] - d['rss_start']) / max(s['peak'] - s['rss_start'], 1):11.3f}", flush=True)


if __name__ == "__main__":
    main()
