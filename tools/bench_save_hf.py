"""What --save-hf adds to a save, in one run: Qwen3-0.6B's shape, CPU, one process, fp32 training state.

    python tools/bench_save_hf.py [--workdir DIR] [--rounds 2]

Builds a randomly initialised Qwen3-0.6B (its config, a small tokenizer), trains one step through
examples/finetune.py's start-up path, then times, --rounds times and interleaved:

  save       the Megatron checkpoint (dist_checkpointing, manifest, rename, tracker): a save without --save-hf
  hf export  what --save-hf adds after it: iter_N/hf/ in bf16 (per-layer gather and write, config, tokenizer)
             and its parity check (transformers loads the directory on the CPU and runs 16 tokens)

Peak memory is the largest RSS above the RSS at the start of each phase, sampled every 5 ms. Prints the best
time and the largest peak of each phase and the ratios of a save with --save-hf (save + hf export) to one without.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shlex
import tempfile
import threading
import time
from pathlib import Path

QWEN3_0_6B = dict(num_hidden_layers=28, hidden_size=1024, intermediate_size=3072, num_attention_heads=16,
                  num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
                  rms_norm_eps=1e-6, tie_word_embeddings=True, rope_parameters={"rope_type": "default",
                                                                              "rope_theta": 1e6})


def make_inputs(work: Path) -> tuple[Path, Path]:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from megatron_sft.tiny.tokenizer import make_tiny_tokenizer

    model = work / "qwen3-0.6b"
    if not (model / "config.json").is_file():
        torch.manual_seed(0)
        Qwen3ForCausalLM(Qwen3Config(dtype="float32", **QWEN3_0_6B)).save_pretrained(model)
        make_tiny_tokenizer("qwen3").save_pretrained(model)
    data = work / "data.jsonl"
    rng = random.Random(0)
    with open(data, "w") as f:
        for _ in range(64):
            words = " ".join(rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(40))
            f.write(json.dumps({"messages": [{"role": "user", "content": words},
                                             {"role": "assistant", "content": words}]}) + "\n")
    return model, data


class PeakRss:
    """Largest RSS above the starting RSS while the block runs (sampled in a thread)."""

    def __enter__(self):
        self.start = self.peak = _rss()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        self.t0 = time.perf_counter()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, _rss())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, _rss())
        self.growth = self.peak - self.start


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=2)
    cli = parser.parse_args()
    work = cli.workdir or Path(tempfile.mkdtemp(prefix="bench_save_hf_"))
    model, data = make_inputs(work)
    from megatron_sft.arguments import parse_args
    from megatron_sft.training.loop import start_training

    save = work / "ckpt"
    flags = (f"--load {model} --data-path {data} --data-cache-dir {work / 'cache'} --device cpu --seq-length 256 "
             f"--micro-batch-size 1 --global-batch-size 1 --train-iters 1 --lr 1e-5 --log-interval 1000 "
             f"--split 100,0,0 --eval-iters 0 --save {save}")
    trainer = start_training(parse_args(shlex.split(flags)))
    trainer.step()
    results = {"save": [], "hf export": []}
    for _ in range(cli.rounds):
        with PeakRss() as s:
            path = trainer.checkpointer.save(trainer.state.iteration, trainer.content())  # --save-hf off: alone
        with PeakRss() as h:
            trainer.content().write_hf(path)
        results["save"].append(s)
        results["hf export"].append(h)
    print(f"Qwen3-0.6B shape, CPU fp32 training state, 1 process; best of {cli.rounds} rounds; hf export in bf16")
    print(f"{'phase':12}{'seconds':>9}{'peak RSS growth GB':>20}")
    best = {}
    for name, runs in results.items():
        best[name] = (min(r.seconds for r in runs), max(r.growth for r in runs))
        print(f"{name:12}{best[name][0]:9.1f}{best[name][1] / 1e9:20.2f}")
    (s_t, s_m), (h_t, h_m) = best["save"], best["hf export"]
    print(f"with --save-hf / without: time {(s_t + h_t) / s_t:.2f}x, peak RSS growth {max(s_m, h_m) / s_m:.2f}x "
          f"(RSS before the saves: {results['save'][0].start / 1e9:.1f} GB)")


if __name__ == "__main__":
    main()
