"""SmolLM2-135M-Instruct (real weights) through Megatron-Core: logits and greedy generation, one launch per
world size (1: TP=1, 3: TP=3, the 9 heads / 3 KV groups split three ways).

    torchrun --nproc_per_node=N smollm2.py --load HF_DIR --tokens tokens.pt --prompts prompts.json --out DIR

Writes, from rank 0, OUT/logits_tp{N}.pt and OUT/greedy_tp{N}.json (the prompt ids and new tokens of each
prompt); the test compares them with transformers reading the GGUF itself.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--load", "--tokens", "--prompts", "--out"):
        parser.add_argument(name, type=Path, required=True)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    cli = parser.parse_args()
    tp = int(os.environ["WORLD_SIZE"])

    import torch

    from megatron_sft.arguments import add_inference_args, parse_args
    from megatron_sft.inference.generate import generate
    from megatron_sft.inference.logits import forward_logits
    from megatron_sft.inference.prompts import Prompt, render_prompt
    from megatron_sft.inference.run import generation_options
    from megatron_sft.loading import build_and_load, load_run_tokenizer
    from megatron_sft.runtime.device import setup_device
    from megatron_sft.runtime.distributed import init_parallel_state, init_process_group, shutdown

    args = parse_args(["--load", str(cli.load), "--device", "cpu", "--seq-length", "256", "--micro-batch-size", "1",
                       "--tensor-model-parallel-size", str(tp), "--max-new-tokens", str(cli.max_new_tokens),
                       "--inference-batch-size", "4", "--distributed-timeout-minutes", "5"],
                      extra=[add_inference_args])
    args = setup_device(args)
    init_process_group(args.device, args.distributed_timeout_minutes)
    init_parallel_state(tp=tp, pp=1, ep=1, etp=1, seed=args.seed)
    chunks = build_and_load(args)
    tokenizer = load_run_tokenizer(args)
    logits = forward_logits(chunks, torch.load(cli.tokens))
    prompts = [render_prompt(Prompt(m, "test"), tokenizer, chat_template=True, enable_thinking=False)
               for m in json.loads(cli.prompts.read_text())]
    runs = generate(chunks, prompts, generation_options(args, tokenizer))
    if int(os.environ["RANK"]) == 0:
        torch.save(logits, cli.out / f"logits_tp{tp}.pt")
        (cli.out / f"greedy_tp{tp}.json").write_text(json.dumps(
            [{"prompt_ids": ids, "tokens": run.tokens} for ids, run in zip(prompts, runs)]))
    shutdown()


if __name__ == "__main__":
    main()
