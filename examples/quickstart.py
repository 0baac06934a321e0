"""The main job on an embedded tiny default: runs anywhere, no GPU, no network.

    python examples/quickstart.py [--workdir runs/quickstart] [--train-iters 40]

1. builds a tiny Qwen3 (tokenizer, chat template, random weights) as a Hugging Face directory;
2. imports it into a Megatron-Core GPTModel and prints the logits parity against transformers;
3. writes a synthetic chat dataset (reverse a short string) and fine-tunes on it through the
   same code path as examples/finetune.py, printing the loss before and after.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def write_reversal_data(path: Path, n: int = 400, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            word = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(2, 6)))
            messages = [{"role": "user", "content": f"reverse: {word}"},
                        {"role": "assistant", "content": " ".join(word[::-1])}]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def logits_parity(hf_dir: Path) -> float:
    """Max |Megatron - transformers| over the logits of a random batch, fp32."""
    import torch
    from transformers import AutoModelForCausalLM

    from megatron_sft.arguments import parse_args
    from megatron_sft.checkpointing.convert import build_and_load
    from megatron_sft.inference.logits import forward_logits
    from megatron_sft.runtime.distributed import init_from_args

    args = parse_args(["--load", str(hf_dir), "--device", "cpu"])
    init_from_args(args)
    tokens = torch.randint(0, 400, (2, 32), generator=torch.Generator().manual_seed(0))
    ours = forward_logits(build_and_load(args), tokens)
    reference = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = reference(tokens).logits
    return (ours[..., : theirs.shape[-1]] - theirs).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("runs/quickstart"))
    parser.add_argument("--train-iters", type=int, default=40)
    cli = parser.parse_args()

    from megatron_sft.arguments import parse_args
    from megatron_sft.runtime.distributed import shutdown
    from megatron_sft.runtime.log import setup_logging
    from megatron_sft.tiny import make_tiny_model
    from megatron_sft.training.loop import finetune

    setup_logging()
    cli.workdir.mkdir(parents=True, exist_ok=True)
    hf_dir = make_tiny_model("qwen3", cli.workdir / "tiny-qwen3")
    diff = logits_parity(hf_dir)
    data = write_reversal_data(cli.workdir / "reverse.jsonl")
    args = parse_args([
        "--load", str(hf_dir), "--data-path", str(data), "--device", "cpu", "--seq-length", "128",
        "--micro-batch-size", "4", "--global-batch-size", "8", "--lr", "3e-3", "--min-lr", "3e-4",
        "--lr-decay-style", "cosine", "--lr-warmup-iters", "4", "--train-iters", str(cli.train_iters),
        "--split", "95,5,0", "--eval-interval", "20", "--eval-iters", "2", "--log-interval", "10",
        "--save", str(cli.workdir / "checkpoint"), "--data-cache-dir", str(cli.workdir / "data-cache"),
    ])
    trainer = finetune(args)
    losses = [loss for _, loss in trainer.history]
    print(f"\nlogits parity with transformers (fp32, max abs diff): {diff:.2e}")
    print(f"training loss: {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} iterations")
    print(f"checkpoint: {trainer.last_save}")
    shutdown()


if __name__ == "__main__":  # dist_checkpointing's spawned saver re-imports this file
    from megatron_sft.cli import run_main

    run_main(main)
