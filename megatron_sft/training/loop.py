"""finetune: initialize, build the model, load, build data, train, save."""

from __future__ import annotations

import itertools
import logging
import math
import time
from pathlib import Path

import torch

from megatron_sft.config import RunConfig
from megatron_sft.checkpointing.checkpointer import Checkpointer, claim_save_dir
from megatron_sft.errors import UserError
from megatron_sft.loading import hf_assets_source, load_run_tokenizer
from megatron_sft.models.builder import padded_vocab_size
from megatron_sft.runtime.distributed import collective_device
from megatron_sft.training.metrics import Reporters, gpu_peak_flops, sample_lengths, training_flops
from megatron_sft.training.progress import Progress, figure_format
from megatron_sft.training.resume_check import check_resume
from megatron_sft.training.runlog import RunFiles
from megatron_sft.training.signals import ExitController
from megatron_sft.training.state import TrainingContent, TrainState, load_training_checkpoint, resume_point
from megatron_sft.training.step import train_step

log = logging.getLogger(__name__)


class TrainingDiverged(UserError):
    """NaN/Inf loss or gradient norm: the run stops, the last good checkpoint stays the latest."""


def resolve_epochs(cfg: RunConfig, packs_per_epoch: int):
    """--train-epochs N: N passes over the training split, in iterations (the last one may reach a little
    past the N-th pass); the LR schedule decays over them unless --lr-decay-iters says otherwise."""
    epochs = cfg.training.train_epochs
    if epochs is None:
        return cfg
    iters = math.ceil(epochs * packs_per_epoch / cfg.training.global_batch_size)
    cfg = cfg.replace(train_iters=iters, lr_decay_iters=cfg.training.lr_decay_iters or iters)
    warmup = cfg.training.lr_warmup_iters
    if cfg.training.lr_warmup_fraction is None and warmup and warmup >= cfg.training.lr_decay_iters:
        raise UserError(f"--lr-warmup-iters {warmup} must be shorter than the decay: --train-epochs {epochs} is "
                        f"{iters} iterations here ({packs_per_epoch} packed sequences per epoch, global batch "
                        f"{cfg.training.global_batch_size}); use e.g. --lr-warmup-iters {iters // 10}")
    log.info("--train-epochs %s: %d packed sequences per epoch, global batch %d -> %d iterations", epochs,
             packs_per_epoch, cfg.training.global_batch_size, cfg.training.train_iters)
    return cfg


def _log_batch(cfg: RunConfig, train) -> None:
    per_pack = (train.conversations_per_epoch or 0) / train.packs_per_epoch
    units = "pairs" if cfg.data.preference else "conversations"
    log.info("batch: %d packed sequences per step x %.2f %s per pack = ~%.1f %s per step "
             "(%d micro-batches of %d per data-parallel rank)", cfg.training.global_batch_size, per_pack, units,
             cfg.training.global_batch_size * per_pack, units, cfg.training.num_microbatches,
             cfg.training.micro_batch_size)


def total_iterations(cfg: RunConfig) -> int:
    if cfg.training.train_iters is not None:
        return cfg.training.train_iters
    return math.ceil(cfg.training.train_samples / cfg.training.global_batch_size)


def _batch_counts(batches: list[dict], cfg: RunConfig) -> torch.Tensor:
    """[real tokens, supervised tokens, FLOPs] of this rank's micro-batches, summed over DP."""
    from megatron.core import parallel_state as ps

    lengths = [n for b in batches for n in sample_lengths(b)]
    counts = torch.tensor([sum(lengths), sum(float(b["num_supervised"]) for b in batches),
                           training_flops(lengths, cfg)], dtype=torch.float64, device=collective_device())
    torch.distributed.all_reduce(counts, group=ps.get_data_parallel_group())
    counts = counts.cpu()
    return counts


def _check_finite(result, iteration: int, cfg: RunConfig, last_save: Path | None) -> None:
    if not cfg.training.check_for_nan_in_loss_and_grad:
        return
    bad = [name for name, v in (("loss", result.loss), ("grad norm", result.grad_norm))
           if v is not None and not math.isfinite(v)]
    if bad:
        raise TrainingDiverged(
            f"{' and '.join(bad)} not finite at iteration {iteration}; stopped without saving. "
            f"Last good checkpoint: {last_save or 'none'}. Lower --lr, or pass --no-check-for-nan-in-loss-and-grad"
        )


def _build_data(cfg: RunConfig, tokenizer, consumed_samples: int):
    from megatron.core import parallel_state as ps

    from megatron_sft.data import build_sft_datasets

    return build_sft_datasets(cfg.data, tokenizer, dp_rank=ps.get_data_parallel_rank(),
                              dp_size=ps.get_data_parallel_world_size(), consumed_samples=consumed_samples)


class Trainer:
    """Holds what one run needs; each phase of a step is a named method."""

    def __init__(self, cfg: RunConfig, files: RunFiles | None = None):
        from megatron_sft.training.setup import build_training_model

        self.cfg = cfg
        self.files = files if files is not None else RunFiles(cfg.checkpoint.save)
        self.tokenizer = load_run_tokenizer(cfg)
        resume = resume_point(cfg)
        if resume is not None:
            check_resume(cfg, resume[0])  # before the data is prepared: a refusal costs nothing
        self.state = resume[1] if resume is not None else TrainState()
        # Data first: --train-epochs sizes the run (and the LR schedule) from the training split.
        self.data = _build_data(cfg, self.tokenizer, self.state.consumed_samples)
        cfg = self.cfg = resolve_epochs(cfg, self.data.train.packs_per_epoch)
        # Recorded in run_args.json, so a model trained from scratch reloads with the same vocabulary.
        cfg = self.cfg = cfg.replace(padded_vocab_size=padded_vocab_size(cfg, len(self.tokenizer)))
        _log_batch(cfg, self.data.train)
        self.model = build_training_model(cfg, resume[0] if resume is not None else None)
        if resume is not None:
            load_training_checkpoint(resume[0], self.model, self.state, cfg)
        self.checkpointer = Checkpointer(cfg.checkpoint, hf_assets_source(cfg), resume[0] if resume else None)
        if cfg.checkpoint.save_hf:
            from megatron_sft.checkpointing.modelopt_state import model_is_quantized
            from megatron_sft.training.hf_output import check_save_hf

            check_save_hf(cfg, self.checkpointer.assets, model_is_quantized(self.model.chunks))
        self.train_batches = iter(self.data.train)
        self.history: list[tuple[int, float]] = []
        self.records: list[dict] = []  # every step's figures, for tests and tools
        self.eval_history: list[tuple[int, float]] = []
        self.source_history: dict[str, list[tuple[int, float]]] = {}  # a blend's per-source losses
        self.exit = ExitController(cfg)
        self.reporters = Reporters(cfg, torch.distributed.get_rank() == 0)
        self.peak_flops = gpu_peak_flops()
        self.totals = torch.zeros(3, dtype=torch.float64)  # tokens, supervised tokens, FLOPs
        self.train_seconds = 0.0
        if cfg.checkpoint.save:
            self.checkpointer.check_space("at start-up", self.content())

    def next_global_batch(self) -> list[dict]:
        batches = list(itertools.islice(self.train_batches, self.cfg.training.num_microbatches))
        if len(batches) < self.cfg.training.num_microbatches:
            raise RuntimeError("the training data stream ended; it should restart epochs by itself")
        return batches

    def step(self) -> dict:
        cfg = self.cfg
        batches = self.next_global_batch()
        t0 = time.perf_counter()
        result = self.train_step(batches)
        seconds = time.perf_counter() - t0
        self.train_seconds += seconds
        self.state.iteration += 1
        self.state.consumed_samples += cfg.training.global_batch_size
        self.state.optimizer_steps += 0 if result.skipped else 1
        _check_finite(result, self.state.iteration, cfg, self.checkpointer.last_save)
        counts = _batch_counts(batches, cfg)
        self.totals += counts
        self.history.append((self.state.iteration, result.loss))
        extra = self.step_metrics(result)
        for name in self.sources("train"):
            self.source_history.setdefault(name, []).append((self.state.iteration, extra[f"loss/{name}"]))
        world = torch.distributed.get_world_size()
        mfu = counts[2].item() / seconds / (self.peak_flops * world) if self.peak_flops else None
        return {"loss": result.loss, "lr": result.lr, "grad_norm": result.grad_norm, "seconds": seconds,
                "tokens_per_s": counts[0].item() / seconds, "supervised_per_s": counts[1].item() / seconds,
                "mfu": mfu, "epoch": self.state.consumed_samples / self.data.train.packs_per_epoch, **extra}

    def train_step(self, batches: list[dict]):
        """One optimizer step on `batches` (another objective overrides it: training/dpo.py)."""
        from megatron_sft.training.step import counted_batches, make_forward_step, total_loss_weight

        cfg, model = self.cfg, self.model
        total = None
        if cfg.data.loss_normalization == "sample" or self.data.weighted:  # fractional weights: see share_loss_func
            batches, total = counted_batches(batches), total_loss_weight(batches)
        forward = make_forward_step(model.layout, model.lm_head_chunk_size, model.config.sequence_parallel,
                                    self.neftune(), total, len(self.sources("train")))
        return train_step(model, batches, cfg.data.seq_length, cfg.training.micro_batch_size,
                          cfg.training.global_batch_size, forward_step=forward)

    def neftune(self):
        """NEFTune's settings for the step being computed (None: no noise)."""
        from megatron_sft.training.neftune import Neftune

        alpha = self.cfg.training.neftune_noise_alpha
        return None if alpha is None else Neftune(alpha, self.cfg.training.seed, self.state.iteration + 1)

    def step_metrics(self, result) -> dict:
        """Figures of the objective beyond the loss: for SFT on a blend, each source's (training/sources.py)."""
        from megatron_sft.training.sources import source_figures

        names = self.sources("train")
        return source_figures(result.reports, names) if names else {}

    def sources(self, split: str) -> list[str]:
        """The names of a blend's sources in `split` (train, valid); none for one source. (Distillation has none at
        validation: it reports the LM loss there.)"""
        if split != "train" and self.data.valid_sets:
            return []  # --multiple-validation-sets: one source per set, each set validated on its own
        names = self.data.train_sources if split == "train" else self.data.valid_sources
        return names if len(names) > 1 else []

    def maybe_evaluate(self, force: bool = False) -> None:
        cfg = self.cfg
        if (self.data.valid is None and not self.data.valid_sets) or not cfg.logging.eval_iters:
            return
        if not force and (not cfg.logging.eval_interval or self.state.iteration % cfg.logging.eval_interval):
            return
        if self.eval_history and self.eval_history[-1][0] == self.state.iteration:
            return  # already validated at this iteration
        loss, extra = self.evaluate(cfg.logging.eval_iters)
        self.eval_history.append((self.state.iteration, loss))
        # a token cross-entropy has a perplexity; another objective's loss (DPO) has its own figures instead
        figures = extra or {"perplexity": math.exp(min(loss, 50.0))}
        shown = "".join(f" | {k} {format(v, figure_format(k))}" for k, v in figures.items())
        log.info("validation at iteration %d | loss %.5f%s", self.state.iteration, loss, shown)
        self.files.write("validation", self.state.iteration, {"loss": loss, **figures})
        self.reporters.scalars({"validation/loss": loss, **{f"validation/{'ppl' if k == 'perplexity' else k}": v
                                                            for k, v in figures.items()}}, self.state.iteration)

    def evaluate(self, eval_iters: int) -> tuple[float, dict]:
        """(validation loss, the objective's other figures) over `eval_iters` global batches: perplexity, and each
        source's loss and perplexity when the validation data has several (files, or a blend's sources). With
        --multiple-validation-sets each file gets `eval_iters` batches of its own, and the loss is theirs together."""
        from megatron_sft.training.sources import source_figures
        from megatron_sft.training.step import _loss_everywhere, make_forward_step

        model, names = self.model, self.sources("valid")
        forward = make_forward_step(model.layout, model.lm_head_chunk_size, model.config.sequence_parallel,
                                    n_sources=len(names))
        if self.data.valid_sets:
            reports, figures = [], {}
            for name, stream in self.data.valid_sets:
                mine = self.validation_reports(eval_iters, lambda group: (group, forward), stream)
                figures[f"loss/{name}"] = _loss_everywhere(mine)
                reports += mine
        else:
            reports = self.validation_reports(eval_iters, lambda group: (group, forward))
            figures = {k: v for k, v in source_figures(reports, names).items() if k.startswith("loss/")} if names else {}
        loss = _loss_everywhere(reports)
        out = {"perplexity": math.exp(min(loss, 50.0))}
        for key, value in figures.items():  # each file's (or source's) loss, then its perplexity
            out.update({key: value, f"ppl/{key.removeprefix('loss/')}": math.exp(min(value, 50.0))})
        return loss, out

    def validation_reports(self, eval_iters: int, prepare, stream=None) -> list[dict]:
        """The last stage's reports of the forward-only schedule over `eval_iters` global batches of `stream` (the
        validation split's, by default), at most one pass: more would count the same packs twice. For an objective's
        own figures: prepare(micro-batches) -> (micro-batches, forward_step) of each global batch."""
        from megatron_sft.training.step import run_schedule

        cfg, stream, reports = self.cfg, stream or self.data.valid, []
        eval_iters = min(eval_iters, math.ceil(stream.packs_per_epoch / cfg.training.global_batch_size))
        batches = iter(stream)
        for chunk in self.model.chunks:
            chunk.eval()
        with torch.no_grad():
            for _ in range(eval_iters):
                group = list(itertools.islice(batches, cfg.training.num_microbatches))
                if not group:
                    break
                group, forward_step = prepare(group)
                reports += run_schedule(self.model, group, cfg.data.seq_length, cfg.training.micro_batch_size,
                                        forward_only=True, forward_step=forward_step)
        for chunk in self.model.chunks:
            chunk.train()
        return reports

    def content(self) -> TrainingContent:
        """What a checkpoint of this run holds now (the checkpointer writes it)."""
        return TrainingContent(self.model, self.state, self.cfg, self.history, self.eval_history, self.source_history)

    def run(self) -> None:
        cfg, total = self.cfg, total_iterations(self.cfg)
        if self.state.iteration >= total:  # a finished run started again: nothing to do, nothing to rewrite
            log.info("already at iteration %d of %d; nothing to train (the checkpoint stays as it is)",
                     self.state.iteration, total)
            self.checkpointer.repair_missing_hf(self.state.iteration, self.content())
            return
        progress = Progress(self.state.iteration, total, cfg.logging.log_interval)
        reason = None
        while self.state.iteration < total and reason is None:
            figures = self.step()
            self.records.append(figures)
            progress.update(self.state.iteration, figures)
            if self.state.iteration % max(1, cfg.logging.log_interval) == 0 or self.state.iteration == total:
                self.files.write("train", self.state.iteration, figures)
            self.reporters.scalars({f"train/{k}": v for k, v in figures.items()}, self.state.iteration)
            self.maybe_evaluate()
            if self.checkpointer.due(self.state.iteration):
                self.checkpointer.save(self.state.iteration, self.content())
            reason = self.exit.reason_to_exit(self.state.iteration)
        progress.close()
        self.finish(reason)

    def finish(self, reason: str | None) -> None:
        if reason and not self.exit.interrupted:
            log.info("stopping early: %s", reason)
        elif not reason:
            self.maybe_evaluate(force=True)  # as Megatron-LM, validate once more at the end of training
        self.checkpointer.finish(self.state.iteration, self.content())
        if self.exit.interrupted:
            log.info("interrupted at iteration %d; saved %s", self.state.iteration,
                     self.checkpointer.last_save or "nothing (no --save)")
        self.reporters.close()
        self.summary()
        self.files.close()

    def summary(self) -> None:
        tokens, supervised, flops = self.totals.tolist()
        secs = max(self.train_seconds, 1e-9)
        first = self.history[0][1] if self.history else math.nan
        last = self.history[-1][1] if self.history else math.nan
        epochs = self.state.consumed_samples / self.data.train.packs_per_epoch
        log.info("done: %d iterations, %d samples consumed (%.2f epochs) | loss %.4f -> %.4f | %.0f tokens (%.0f "
                 "supervised) in %.1f s: %.1f tokens/s, %.1f supervised tokens/s | %s",
                 self.state.iteration, self.state.consumed_samples, epochs, first, last, tokens, supervised, secs,
                 tokens / secs, supervised / secs, self.checkpointer.describe())


def start_training(cfg: RunConfig, files: RunFiles | None = None) -> Trainer:
    """The one start-up sequence of a training run: finetune.py, sft(), the tests' workers and tools/bench_*.
    Device, layer spec and process groups, the notices (startup.start), then data, model and resume inside the
    Trainer. --lr and the run length were checked with the flags (arguments/training.py: check_run_length)."""
    from megatron_sft.startup import start

    return Trainer(start(cfg, training=True), files)


def finetune(cfg: RunConfig, trainer_class: type[Trainer] | None = None) -> Trainer:
    """Train as `cfg` says (another objective: its Trainer subclass, training/dpo.py); returns the Trainer (its
    history is what tests and tools read)."""
    from megatron_sft.startup import start

    claim = claim_save_dir(cfg.checkpoint.save)  # before this run writes anything there
    files = RunFiles(cfg.checkpoint.save)  # training.log gets the start-up lines too
    try:
        trainer = (trainer_class or Trainer)(start(cfg, training=True), files)
        trainer.run()
    finally:
        files.close()
        if claim is not None:
            claim.release()
    return trainer
