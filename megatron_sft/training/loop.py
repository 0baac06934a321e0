"""finetune: initialize, build the model, load, build data, train, save."""

from __future__ import annotations

import itertools
import logging
import math
import time
from pathlib import Path

import torch

from megatron_sft.checkpointing.loading import args_record, hf_assets_source
from megatron_sft.errors import UserError
from megatron_sft.training.metrics import Reporters, gpu_peak_flops, sample_lengths, save_loss_curve, training_flops
from megatron_sft.training.progress import Progress
from megatron_sft.training.signals import ExitController
from megatron_sft.training.state import TrainState, load_training_checkpoint, resume_point, save_training_checkpoint
from megatron_sft.training.step import evaluate, train_step

log = logging.getLogger(__name__)


class TrainingDiverged(UserError):
    """NaN/Inf loss or gradient norm: the run stops, the last good checkpoint stays the latest."""


def total_iterations(args) -> int:
    if args.train_iters is not None:
        return args.train_iters
    return math.ceil(args.train_samples / args.global_batch_size)


def _batch_counts(batches: list[dict], args) -> torch.Tensor:
    """[real tokens, supervised tokens, FLOPs] of this rank's micro-batches, summed over DP."""
    from megatron.core import parallel_state as ps

    lengths = [n for b in batches for n in sample_lengths(b)]
    counts = torch.tensor([sum(lengths), sum(float(b["num_supervised"]) for b in batches),
                           training_flops(lengths, args)], dtype=torch.float64)
    torch.distributed.all_reduce(counts, group=ps.get_data_parallel_group())
    return counts


def _check_finite(result, iteration: int, args, last_save: str | None) -> None:
    if not args.check_for_nan_in_loss_and_grad:
        return
    bad = [name for name, v in (("loss", result.loss), ("grad norm", result.grad_norm))
           if v is not None and not math.isfinite(v)]
    if bad:
        raise TrainingDiverged(
            f"{' and '.join(bad)} not finite at iteration {iteration}; stopped without saving. "
            f"Last good checkpoint: {last_save or 'none'}. Lower --lr, or pass --no-check-for-nan-in-loss-and-grad"
        )


def _load_tokenizer(args):
    from transformers import AutoTokenizer

    source = args.tokenizer_model or hf_assets_source(args)
    if source is None:
        raise UserError("no tokenizer: pass --tokenizer-model (a Hugging Face directory or name)")
    return AutoTokenizer.from_pretrained(str(source))


def _build_data(args, tokenizer, consumed_samples: int):
    from megatron.core import parallel_state as ps

    from megatron_sft.data import DataConfig, build_sft_datasets

    return build_sft_datasets(DataConfig.from_args(args), tokenizer, dp_rank=ps.get_data_parallel_rank(),
                              dp_size=ps.get_data_parallel_world_size(), consumed_samples=consumed_samples)


class Trainer:
    """Holds what one run needs; each phase of a step is a named method."""

    def __init__(self, args):
        from megatron_sft.training.setup import build_training_model

        self.args = args
        self.tokenizer = _load_tokenizer(args)
        resume = resume_point(args)
        self.model = build_training_model(args, len(self.tokenizer), resume is not None)
        self.state = TrainState()
        if resume is not None:
            ckpt_dir, self.state = resume
            load_training_checkpoint(ckpt_dir, self.model, self.state)
        self.data = _build_data(args, self.tokenizer, self.state.consumed_samples)
        self.train_batches = iter(self.data.train)
        self.history: list[tuple[int, float]] = []
        self.records: list[dict] = []  # every step's figures, for tests and tools
        self.eval_history: list[tuple[int, float]] = []
        self.last_save: str | None = None
        self.saved_iteration: int | None = None
        self.exit = ExitController(args)
        self.reporters = Reporters(args, torch.distributed.get_rank() == 0)
        self.peak_flops = gpu_peak_flops()
        self.totals = torch.zeros(3, dtype=torch.float64)  # tokens, supervised tokens, FLOPs
        self.train_seconds = 0.0

    def next_global_batch(self) -> list[dict]:
        batches = list(itertools.islice(self.train_batches, self.args.num_microbatches))
        if len(batches) < self.args.num_microbatches:
            raise RuntimeError("the training data stream ended; it should restart epochs by itself")
        return batches

    def step(self) -> dict:
        args = self.args
        batches = self.next_global_batch()
        t0 = time.perf_counter()
        result = train_step(self.model, batches, args.seq_length, args.micro_batch_size, args.global_batch_size)
        seconds = time.perf_counter() - t0
        self.train_seconds += seconds
        self.state.iteration += 1
        self.state.consumed_samples += args.global_batch_size
        self.state.optimizer_steps += 0 if result.skipped else 1
        _check_finite(result, self.state.iteration, args, self.last_save)
        counts = _batch_counts(batches, args)
        self.totals += counts
        self.history.append((self.state.iteration, result.loss))
        world = torch.distributed.get_world_size()
        mfu = counts[2].item() / seconds / (self.peak_flops * world) if self.peak_flops else None
        return {"loss": result.loss, "lr": result.lr, "grad_norm": result.grad_norm, "seconds": seconds,
                "tokens_per_s": counts[0].item() / seconds, "supervised_per_s": counts[1].item() / seconds,
                "mfu": mfu}

    def maybe_evaluate(self, force: bool = False) -> None:
        args = self.args
        if self.data.valid is None or not args.eval_iters:
            return
        if not force and (not args.eval_interval or self.state.iteration % args.eval_interval):
            return
        loss = evaluate(self.model, iter(self.data.valid), args.eval_iters, args.num_microbatches,
                        args.seq_length, args.micro_batch_size)
        self.eval_history.append((self.state.iteration, loss))
        log.info("validation at iteration %d | loss %.5f | perplexity %.3f", self.state.iteration, loss,
                 math.exp(min(loss, 50.0)))
        self.reporters.scalars({"validation/loss": loss, "validation/ppl": math.exp(min(loss, 50.0))},
                               self.state.iteration)

    def save(self) -> None:
        if not self.args.save:
            return
        path = save_training_checkpoint(self.args.save, self.model, self.state, args_record(self.args),
                                        hf_assets_source(self.args))
        self.last_save, self.saved_iteration = str(path), self.state.iteration

    def run(self) -> None:
        args, total = self.args, total_iterations(self.args)
        progress = Progress(self.state.iteration, total, args.log_interval)
        reason = None
        while self.state.iteration < total and reason is None:
            figures = self.step()
            self.records.append(figures)
            progress.update(self.state.iteration, figures)
            self.reporters.scalars({f"train/{k}": v for k, v in figures.items()}, self.state.iteration)
            self.maybe_evaluate()
            if args.save_interval and self.state.iteration % args.save_interval == 0:
                self.save()
            reason = self.exit.reason_to_exit(self.state.iteration)
        progress.close()
        self.finish(reason)

    def finish(self, reason: str | None) -> None:
        if reason:
            log.info("stopping early: %s", reason)
        if self.args.save and self.saved_iteration != self.state.iteration:
            self.save()
        if self.last_save and torch.distributed.get_rank() == 0:
            save_loss_curve(self.history, self.eval_history, Path(self.last_save) / "loss_curve.png")
        self.reporters.close()
        self.summary()

    def summary(self) -> None:
        tokens, supervised, flops = self.totals.tolist()
        secs = max(self.train_seconds, 1e-9)
        first = self.history[0][1] if self.history else math.nan
        last = self.history[-1][1] if self.history else math.nan
        log.info("done: %d iterations, %d samples consumed | loss %.4f -> %.4f | %.0f tokens (%.0f supervised) "
                 "in %.1f s: %.1f tokens/s, %.1f supervised tokens/s | checkpoint: %s",
                 self.state.iteration, self.state.consumed_samples, first, last, tokens, supervised, secs,
                 tokens / secs, supervised / secs, self.last_save or "not saved (no --save)")


def choose_transformer_impl(args) -> None:
    """Packed batches isolate samples with an explicit block-diagonal mask, which the local spec
    honours. Transformer Engine needs THD attention (cu_seqlens) for that, not built yet."""
    if args.transformer_impl == "transformer_engine":
        raise UserError("--transformer-impl transformer_engine: packed SFT training needs THD attention to keep "
                        "samples apart, which is not implemented yet; use --transformer-impl local")
    if args.transformer_impl is None:
        args.transformer_impl = "local"
        args.notices.append("training uses the local layer spec: it honours the packing mask exactly")


def finetune(args) -> Trainer:
    """Train as `args` say; returns the Trainer (its history is what tests and tools read)."""
    from megatron_sft.runtime.distributed import init_from_args

    choose_transformer_impl(args)
    init_from_args(args)
    for notice in getattr(args, "notices", []):
        log.info("note: %s", notice)
    trainer = Trainer(args)
    trainer.run()
    return trainer
