"""Generation and MMLU checks, several layouts per launch (one launch per world size).

    torchrun --nproc_per_node=N inference.py --spec SPEC.json --out DIR

SPEC (written by tests/distributed/test_inference.py): models by family, chat prompts, an extra stop
token per family, max_new_tokens, the MMLU fixture and a prompts file. Writes, from rank 0, one JSON
per (family, layout) with every run's tokens and MMLU letters; the test compares them with transformers.
World size 2 also saves a Megatron checkpoint at TP=2 and generates / runs MMLU from it at PP=2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

LAYOUTS = {  # name -> (tp, pp, ep) per world size
    1: {"tp1": (1, 1, 1)},
    2: {"tp2": (2, 1, 1), "pp2": (1, 2, 1), "ep2": (1, 1, 2)},
}
MOE_LAYOUTS = ("tp1", "ep2")  # MoE over gloo is slow; TP and PP are covered by the dense families
SAMPLING = {"temperature": 0.8, "top_k": 50, "top_p": 0.9, "seed": 7}


def flags(load, tp: int, pp: int, ep: int, spec: dict) -> list[str]:
    return ["--load", str(load), "--device", "cpu", "--seq-length", "1024", "--micro-batch-size", "1",
            "--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size", str(pp),
            "--expert-model-parallel-size", str(ep), "--distributed-timeout-minutes", "3",
            "--max-new-tokens", str(spec["max_new_tokens"]), "--inference-batch-size", "4",
            "--mmlu-dataset", spec["mmlu"]]


def setup(argv: list[str]):
    from megatron_sft.arguments import add_inference_args, parse_args
    from megatron_sft.arguments.inference import add_generation_extra_args
    from megatron_sft.runtime.device import setup_device
    from megatron_sft.runtime.distributed import init_parallel_state, init_process_group

    args = parse_args(argv, extra=[add_inference_args, add_generation_extra_args])
    args = setup_device(args)
    init_process_group(args.device, args.distributed_timeout_minutes)
    init_parallel_state(tp=args.tensor_model_parallel_size, pp=args.pipeline_model_parallel_size,
                        ep=args.expert_model_parallel_size, etp=args.expert_tensor_parallel_size, seed=args.seed)
    return args


def generation_runs(args, chunks, tokenizer, spec: dict, family: str) -> dict:
    """Greedy with / without the cache, batched (left padding) and one by one, an extra stop, sampling."""
    from megatron_sft.inference.generate import generate
    from megatron_sft.inference.prompts import Prompt, render_prompt
    from megatron_sft.inference.run import generation_options
    from megatron_sft.inference.sampling import SamplingSettings

    opts = generation_options(args, tokenizer)
    ids = [render_prompt(Prompt(m, "spec"), tokenizer, chat_template=True, enable_thinking=False)
           for m in spec["prompts"]]
    variants = {
        "cache_b4": opts,
        "cache_b1": dataclasses.replace(opts, batch_size=1),
        "nocache_b4": dataclasses.replace(opts, use_cache=False),
    }
    if family == "qwen3":  # the rest does not depend on the architecture
        variants["stop_b4"] = dataclasses.replace(opts, stop_ids=opts.stop_ids + (spec["extra_stop"][family],))
        variants["sample_a"] = variants["sample_b"] = dataclasses.replace(opts, sampling=SamplingSettings(**SAMPLING))
    runs = {name: [g.tokens for g in generate(chunks, ids, o)] for name, o in variants.items()}
    return {"prompt_ids": ids, "stop_ids": list(opts.stop_ids), "vocab_size": opts.vocab_size, "runs": runs}


def mmlu_runs(args, chunks, tokenizer) -> dict:
    from megatron_sft.inference.run import mmlu_report

    out = {}
    for shots in (0, 2):
        args = args.replace(few_shot=shots)
        subjects = mmlu_report(args, chunks, tokenizer)["subjects"]
        out[f"shots{shots}"] = {s: r["predictions"] for s, r in subjects.items()}
    return out


def check_layout(load, family: str, layout: str, tp: int, pp: int, ep: int, spec: dict, out: Path) -> None:
    from megatron.core import parallel_state as ps

    from megatron_sft.loading import build_and_load
    from megatron_sft.loading import load_run_tokenizer as load_tokenizer

    args = setup(flags(load, tp, pp, ep, spec))
    chunks = build_and_load(args)
    tokenizer = load_tokenizer(args)
    result = generation_runs(args, chunks, tokenizer, spec, family)
    if not family.endswith("_moe"):
        result["mmlu"] = mmlu_runs(args, chunks, tokenizer)
    if ps.get_tensor_model_parallel_rank() == 0 and int(os.environ["RANK"]) == 0:
        (out / "gen").mkdir(parents=True, exist_ok=True)
        (out / "gen" / f"{family}__{layout}.json").write_text(json.dumps(result))


def entry_points(spec: dict, out: Path) -> None:
    """The functions examples/generate.py and examples/mmlu.py call, end to end (each shuts down)."""
    from megatron_sft.inference.run import generate_main, mmlu_main

    base = flags(spec["models"]["qwen3"], 1, 1, 1, spec)
    generate_main(setup(base + ["--prompts-file", spec["prompts_file"], "--output", str(out / "cli_gen.jsonl")]))
    code = mmlu_main(setup(base + ["--few-shot", "1", "--fraction", "0.5", "--results", str(out / "cli_mmlu.json"),
                                   "--lower-bound", "1.01"]))
    (out / "cli_mmlu_exit.txt").write_text(str(code))  # the exit code apps.main returns


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    cli = parser.parse_args()
    spec = json.loads(cli.spec.read_text())
    world = int(os.environ["WORLD_SIZE"])
    for layout, (tp, pp, ep) in LAYOUTS[world].items():
        for family, path in spec["models"].items():
            if layout in MOE_LAYOUTS if family.endswith("_moe") else ep == 1:
                check_layout(path, family, layout, tp, pp, ep, spec, cli.out)
    if world == 2:
        from megatron_sft.conversion import hf_to_megatron

        ckpt = cli.out / "ckpt_qwen3"
        hf_to_megatron(setup(flags(spec["models"]["qwen3"], 2, 1, 1, spec) + ["--save", str(ckpt)]))
        check_layout(ckpt, "qwen3", "pp2_from_tp2_ckpt", 1, 2, 1, spec, cli.out)
    if world == 1:
        entry_points(spec, cli.out)
    else:
        from megatron_sft.runtime.distributed import shutdown

        shutdown()


if __name__ == "__main__":  # dist_checkpointing's spawned saver re-imports this file
    main()
