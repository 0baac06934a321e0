"""Framework overhead of the finetune loop, measured against a bare Megatron loop in one run.

    python tools/bench_train.py [--iters 6] [--hidden-size 512] [--seq-length 512]

Both loops train the same randomly initialised model (CPU, one process) on the same packed
batches. The bare loop does only what must happen: zero grads, Megatron's forward_backward_func,
optimizer.step. The finetune loop is `Trainer.step` plus everything `Trainer.run` does per
iteration (progress bar, metrics, exit checks). Blocks of the two alternate so that machine
noise hits both. Goal: overhead ratio <= 1.10 with an iteration of at least 200 ms.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import statistics
import tempfile
import time
from pathlib import Path


def write_data(path: Path, n: int = 300) -> Path:
    rng = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda".split()
    with open(path, "w") as f:
        for _ in range(n):
            q = " ".join(rng.choice(words) for _ in range(rng.randint(20, 120)))
            a = " ".join(rng.choice(words) for _ in range(rng.randint(20, 200)))
            f.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                    + "\n")
    return path


def bare_iteration(model, batches, seq_length: int, mbs: int) -> None:
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_sft.training.step import make_forward_step

    for chunk in model.chunks:
        chunk.zero_grad_buffer()
    model.optimizer.zero_grad()
    seq_length, mbs = model.layout.schedule_shape(seq_length, mbs)
    get_forward_backward_func()(forward_step_func=make_forward_step(
        model.layout, model.lm_head_chunk_size, model.config.sequence_parallel), data_iterator=iter(batches),
                                model=model.chunks, num_microbatches=len(batches), seq_length=seq_length,
                                micro_batch_size=mbs, forward_only=False)
    model.optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=6, help="iterations per timed block")
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--seq-length", type=int, default=512)
    cli = parser.parse_args()

    from megatron_sft.arguments import parse_args
    from megatron_sft.tiny import make_tiny_model
    from megatron_sft.training.loop import start_training
    from megatron_sft.training.progress import Progress

    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    tokenizer_dir = make_tiny_model("qwen3", work / "tok")
    h = cli.hidden_size
    args = parse_args(shlex.split(
        f"--tokenizer-model {tokenizer_dir} --data-path {write_data(work / 'data.jsonl')} --device cpu "
        f"--num-layers 4 --hidden-size {h} --ffn-hidden-size {3 * h} --num-attention-heads 8 "
        f"--group-query-attention --num-query-groups 4 --kv-channels {h // 8} --qk-layernorm --swiglu "
        f"--normalization RMSNorm --disable-bias-linear --position-embedding-type rope --norm-epsilon 1e-6 "
        f"--seq-length {cli.seq_length} --max-position-embeddings {cli.seq_length} --micro-batch-size 1 "
        f"--global-batch-size 2 --lr 1e-4 --train-iters 1000000 --log-interval 1000000 --split 100,0,0 "
        f"--data-cache-dir {work / 'cache'} --hidden-dropout 0 --attention-dropout 0"))
    trainer = start_training(args)
    batches = trainer.next_global_batch()
    trainer.next_global_batch = lambda: batches  # same batches for both loops
    progress = Progress(0, 10**6, args.log_interval)

    def framework_block() -> float:
        t0 = time.perf_counter()
        for _ in range(cli.iters):
            figures = trainer.step()  # the body of Trainer.run, minus the run-length bookkeeping
            trainer.records.append(figures)
            progress.update(trainer.state.iteration, figures)
            trainer.reporters.scalars({f"train/{k}": v for k, v in figures.items()}, trainer.state.iteration)
            trainer.maybe_evaluate()
            trainer.exit.reason_to_exit(trainer.state.iteration)
        return (time.perf_counter() - t0) / cli.iters

    def bare_block() -> float:
        t0 = time.perf_counter()
        for _ in range(cli.iters):
            bare_iteration(trainer.model, batches, args.seq_length, args.micro_batch_size)
        return (time.perf_counter() - t0) / cli.iters

    framework_block(), bare_block()  # warm-up
    framework, bare = [], []
    for _ in range(cli.blocks):
        framework.append(framework_block())
        bare.append(bare_block())
    progress.close()
    f, b = statistics.median(framework), statistics.median(bare)
    print(f"model: 4 layers, hidden {h}, seq {cli.seq_length}, 2 micro-batches per iteration, CPU, 1 process")
    print(f"bare loop:     {b * 1000:.0f} ms/iteration (median of {cli.blocks} blocks of {cli.iters})")
    print(f"finetune loop: {f * 1000:.0f} ms/iteration")
    print(f"overhead ratio: {f / b:.3f}  (goal <= 1.10)")


if __name__ == "__main__":
    main()
