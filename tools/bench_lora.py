"""LoRA against full fine-tuning on the Qwen3-0.6B shape, in one run: what each trains, keeps and saves.

    python tools/bench_lora.py [--num-layers 28] [--seq-length 128] [--steps 3] [--rank 16]

Builds a randomly initialised Hugging Face checkpoint with Qwen3-0.6B's config (28 layers, hidden 1024,
FFN 3072, 16 query heads in 8 groups of head dim 128, vocabulary 151936, tied embeddings), then trains it
for a few steps twice, fully and with LoRA on linear_qkv, linear_proj, linear_fc1 and linear_fc2, and
saves a checkpoint of each. Prints trainable parameters, optimizer-state bytes, checkpoint size and the
median step time (the first step is left out), with the LoRA / full ratios. CPU, one process, fp32.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import statistics
import tempfile
from pathlib import Path

QWEN3_06B = dict(hidden_size=1024, intermediate_size=3072, num_attention_heads=16, num_key_value_heads=8,
                 head_dim=128, vocab_size=151936, max_position_embeddings=40960, rms_norm_eps=1e-6,
                 tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1e6})


def make_base(out: Path, num_layers: int) -> Path:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from megatron_sft.tiny.tokenizer import make_tiny_tokenizer

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(num_hidden_layers=num_layers, dtype="float32", **QWEN3_06B))
    model.save_pretrained(out, safe_serialization=True)
    make_tiny_tokenizer("qwen3").save_pretrained(out)
    return out


def write_data(path: Path, n: int = 64) -> Path:
    rng = random.Random(0)
    with open(path, "w") as f:
        for _ in range(n):
            q = " ".join(rng.choice("abcdefgh") * rng.randint(1, 4) for _ in range(rng.randint(10, 30)))
            messages = [{"role": "user", "content": q}, {"role": "assistant", "content": q[::-1]}]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def optimizer_bytes(optimizer) -> int:
    """Bytes of every tensor the optimizer keeps per parameter (Adam's moments; main copies if any)."""
    total = 0
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        torch_opt = getattr(opt, "optimizer", opt)
        for state in torch_opt.state.values():
            total += sum(v.numel() * v.element_size() for v in state.values() if hasattr(v, "numel") and v.dim())
        for group in getattr(opt, "shard_fp32_from_float16_groups", []) or []:
            total += sum(p.numel() * p.element_size() for p in group)
    return total


def run(flags: str, save: Path) -> dict:
    from megatron_sft.arguments import parse_args
    from megatron_sft.training.loop import start_training

    args = parse_args(shlex.split(f"{flags} --save {save}"))
    trainer = start_training(args)
    trainer.run()
    params = [p for c in trainer.model.chunks for p in c.parameters()]
    return {"trainable": sum(p.numel() for p in params if p.requires_grad),
            "optimizer_bytes": optimizer_bytes(trainer.model.optimizer),
            "checkpoint_bytes": sum(p.stat().st_size for p in save.rglob("*") if p.is_file()),
            "step_s": statistics.median(r["seconds"] for r in trainer.records[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-layers", type=int, default=28, help="28 is Qwen3-0.6B; fewer for a quicker look")
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rank", type=int, default=16)
    cli = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_lora_"))
    base = make_base(work / "hf", cli.num_layers)
    common = (f"--load {base} --data-path {write_data(work / 'data.jsonl')} --data-cache-dir {work / 'cache'} "
              f"--device cpu --seq-length {cli.seq_length} --micro-batch-size 1 --global-batch-size 1 "
              f"--train-iters {cli.steps} --lr 1e-4 --log-interval 1000 --split 100,0,0 --eval-iters 0")
    full = run(common, work / "full")
    lora = run(f"{common} --peft lora --lora-rank {cli.rank} --lora-alpha {2 * cli.rank}", work / "lora")
    print(f"Qwen3-0.6B shape ({cli.num_layers} layers), seq {cli.seq_length}, CPU fp32, 1 process; "
          f"LoRA r={cli.rank} on linear_qkv linear_proj linear_fc1 linear_fc2")
    print(f"{'':24}{'full':>14}{'LoRA':>14}{'LoRA/full':>12}")
    rows = (("trainable", "trainable parameters M", 1e6), ("optimizer_bytes", "optimizer state MB", 1e6),
            ("checkpoint_bytes", "checkpoint MB", 1e6), ("step_s", "step time s", 1))
    for key, label, unit in rows:
        print(f"{label:24}{full[key] / unit:14.3f}{lora[key] / unit:14.3f}{lora[key] / full[key]:12.4f}")


if __name__ == "__main__":
    main()
