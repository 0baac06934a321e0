"""What examples/generate.py and examples/mmlu.py run: inputs checked first, then model, work, report."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from megatron_sft.config import RunConfig
from megatron_sft.errors import UserError
from megatron_sft.inference.mmlu_data import load_mmlu
from megatron_sft.inference.prompts import Prompt, load_prompts, render_prompt
from megatron_sft.inference.sampling import SamplingSettings

log = logging.getLogger(__name__)


def _is_rank0() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def prepare(cfg: RunConfig):
    """The common start (startup.start) for inference; returns the config as resolved. Its flags were checked
    before (arguments/inference.py: check_generation_args, check_mmlu_args)."""
    from megatron_sft.startup import start

    if cfg.parallel.sequence_parallel:
        # Decoding one token cannot be split along the sequence; the weights are the same without it.
        cfg = cfg.replace(sequence_parallel=False)
        log.info("--sequence-parallel has no effect in generation and is turned off")
    return start(cfg)


def generation_options(cfg: RunConfig, tokenizer):
    from megatron_sft.data.tokenizer import pad_token_id
    from megatron_sft.inference.generate import GenerationOptions
    from megatron_sft.inference.tokens import real_vocab_size, stop_token_ids
    from megatron_sft.loading import tokenizer_source

    directory = Path(tokenizer_source(cfg))
    return GenerationOptions(
        max_new_tokens=cfg.inference.max_new_tokens,
        vocab_size=real_vocab_size(tokenizer, directory),
        stop_ids=tuple(stop_token_ids(tokenizer, directory)),
        pad_id=pad_token_id(tokenizer),
        sampling=SamplingSettings.from_config(cfg),
        use_cache=not cfg.inference.no_kv_cache,
        batch_size=cfg.inference.inference_batch_size,
        device="cuda" if cfg.runtime.device == "cuda" else "cpu",
        # Mamba layers read no mask (a pad would enter their state); TE's causal attention ignores one.
        masks_supported=cfg.runtime.transformer_impl != "transformer_engine" and not cfg.model.hybrid_override_pattern,
    )


def generate_records(cfg: RunConfig, chunks: list, tokenizer, prompts: list[Prompt]) -> list[dict]:
    """Generate for every prompt; one JSON-ready record each (same on every rank)."""
    from megatron_sft.inference.generate import generate

    opts = generation_options(cfg, tokenizer)
    use_template = not cfg.inference.no_chat_template
    ids = [render_prompt(p, tokenizer, chat_template=use_template, enable_thinking=cfg.inference.enable_thinking)
           for p in prompts]
    for prompt, prompt_ids in zip(prompts, ids):
        if not prompt_ids:
            raise UserError(f"{prompt.source}: the prompt is empty after tokenization")
    records = []
    for prompt, result in zip(prompts, generate(chunks, ids, opts)):
        text_ids = result.tokens[:-1] if result.stop_reason == "stop" else result.tokens
        record = {"source": prompt.source, "messages": prompt.messages, "prompt_ids": result.prompt_ids,
                  "tokens": result.tokens, "completion": tokenizer.decode(text_ids), "stop_reason": result.stop_reason}
        if prompt.reference is not None:
            record["reference"] = prompt.reference
        records.append(record)
    return records


def emit_records(records: list[dict], output: str | None) -> None:
    """Print every completion; write the JSONL file when asked (rank 0 only)."""
    if not _is_rank0():
        return
    for r in records:
        print(f"=== {r['source']} ({len(r['prompt_ids'])} prompt tokens, {len(r['tokens'])} new, {r['stop_reason']})")
        print(f">>> {r['messages'][-1]['content']}")
        print(r["completion"], flush=True)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        with open(output, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        log.info("wrote %d completions to %s", len(records), output)


def generate_main(cfg: RunConfig) -> None:
    prompts = load_prompts(cfg)  # a bad prompts file fails before the model loads
    cfg = prepare(cfg)
    from megatron_sft.loading import build_and_load, load_run_tokenizer
    from megatron_sft.runtime.distributed import shutdown

    tokenizer = load_run_tokenizer(cfg)
    records = generate_records(cfg, build_and_load(cfg), tokenizer, prompts)
    emit_records(records, cfg.inference.output)
    shutdown()


def mmlu_options(cfg: RunConfig, tokenizer):
    from megatron_sft.data.tokenizer import pad_token_id
    from megatron_sft.inference.mmlu import MMLUOptions

    return MMLUOptions(
        few_shot=cfg.inference.few_shot, fraction=cfg.inference.fraction, seed=cfg.training.seed,
        chat_template=cfg.inference.chat_template_prompts,
        enable_thinking=cfg.inference.enable_thinking, batch_size=cfg.inference.inference_batch_size,
        max_tokens=cfg.data.seq_length or cfg.model.max_position_embeddings or 4096, pad_id=pad_token_id(tokenizer),
        device="cuda" if cfg.runtime.device == "cuda" else "cpu",
    )


def mmlu_report(cfg: RunConfig, chunks: list, tokenizer, data: tuple | None = None) -> dict:
    """Evaluate on --mmlu-dataset (or on `data`, its (test, dev) questions already loaded)."""
    from megatron_sft.inference.mmlu import evaluate

    opts = mmlu_options(cfg, tokenizer)
    test, dev = data or load_mmlu(cfg.inference.mmlu_dataset)
    report = evaluate(chunks, tokenizer, test, dev, opts)
    report["settings"] = {"dataset": cfg.inference.mmlu_dataset, "few_shot": opts.few_shot, "fraction": opts.fraction,
                          "seed": opts.seed, "chat_template": opts.chat_template, "load": str(cfg.checkpoint.load)}
    return report


def mmlu_main(cfg: RunConfig) -> int:
    """0, or 1 when the accuracy is below --lower-bound."""
    data = load_mmlu(cfg.inference.mmlu_dataset)  # a missing directory or bad file fails before the model loads
    cfg = prepare(cfg)
    from megatron_sft.inference.mmlu_report import format_table
    from megatron_sft.loading import build_and_load, load_run_tokenizer
    from megatron_sft.runtime.distributed import shutdown

    tokenizer = load_run_tokenizer(cfg)
    report = mmlu_report(cfg, build_and_load(cfg), tokenizer, data)
    rank0 = _is_rank0()
    if rank0:
        print(format_table(report), flush=True)
        if cfg.inference.results:
            Path(cfg.inference.results).parent.mkdir(parents=True, exist_ok=True)
            Path(cfg.inference.results).write_text(json.dumps(report, indent=2) + "\n")
    shutdown()
    micro = report["overall"]["micro"]
    if cfg.inference.lower_bound is not None and micro < cfg.inference.lower_bound:
        if rank0:
            print(f"MMLU accuracy {micro:.4f} (micro average) is below --lower-bound {cfg.inference.lower_bound}",
                  file=sys.stderr, flush=True)
        return 1
    return 0
