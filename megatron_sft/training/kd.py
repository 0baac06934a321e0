"""Knowledge distillation on the SFT stack: the same data, student, layouts, checkpoints and Trainer; the target is a
frozen teacher's output distribution on the supervised tokens (training/kd_loss.py).

Each step, before the student's forward-backward:
  1. the teacher, split over the student's layout (TP, PP, CP, EP, SP) and frozen, runs Megatron's forward-only
     schedule over the step's micro-batches; its last pipeline stage keeps the final hidden states of the
     supervised tokens ([n, h_teacher] per micro-batch; every token's with --lm-head-chunk-size 0);
  2. the student's schedule runs with a forward step whose loss, on the last stage, is the chunked KL against those
     hidden states times the teacher's output layer (plus the LM cross-entropy unless skip_lm_loss).
The teacher is a separate model, not a submodule of the student: checkpoints, --save-hf, export and the optimizer
see the student alone, and the teacher's activations never travel with the student's between pipeline stages.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from megatron_sft.arguments.kd import FLAG, KdSettings, read_kd_cfg, teacher_model_values
from megatron_sft.config import RunConfig
from megatron_sft.errors import UserError
from megatron_sft.models.builder import unwrap
from megatron_sft.training.inputs import PackedLayout, model_inputs
from megatron_sft.training.kd_loss import chunked_kd_loss, full_logits_kd_terms
from megatron_sft.training.lm_head import (
    at_positions,
    hidden_states_instead_of_logits,
    select_supervised,
    supervised_positions,
)
from megatron_sft.training.neftune import noisy_embeddings
from megatron_sft.training.sources import source_report, with_source_report
from megatron_sft.training.step import input_noise

log = logging.getLogger(__name__)


@dataclass
class Teacher:
    chunks: list  # frozen model chunks in eval mode (no DDP, no optimizer)
    config: object  # its TransformerConfig
    source: str


def teacher_config(cfg: RunConfig) -> RunConfig:
    """The student's config with the teacher's shape: same layout, dtype and kernels; no adapters."""
    values = teacher_model_values(cfg)
    values.setdefault("padded_vocab_size", cfg.model.padded_vocab_size)
    if values["padded_vocab_size"] != cfg.model.padded_vocab_size:
        raise UserError(f"{FLAG} {cfg.kd.export_kd_teacher_load}: vocabulary {values['padded_vocab_size']} but the "
                        f"student's is {cfg.model.padded_vocab_size}; the teacher must share the student's tokenizer")
    return cfg.replace(**values, peft=None)


@contextmanager
def _rng_untouched():
    """Building the teacher after a resume restored the RNG states must not move them."""
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    tracker = get_cuda_rng_tracker()
    states = tracker.get_states()
    with torch.random.fork_rng(devices=[]):
        yield
    tracker.set_states(states)


def build_teacher(cfg: RunConfig) -> Teacher:
    """The teacher's chunks for this rank, its weights loaded in the run's dtype, frozen."""
    from megatron_sft.loading import load_reference_weights
    from megatron_sft.models.builder import build_model_chunks
    from megatron_sft.to_mcore import transformer_config

    tcfg = teacher_config(cfg)
    source = cfg.kd.export_kd_teacher_load
    with _rng_untouched():
        config = transformer_config(tcfg, skip_init=True)
        chunks = build_model_chunks(tcfg, config, tcfg.model.padded_vocab_size)
        load_reference_weights(tcfg, chunks, source)
    for chunk in chunks:
        chunk.eval()
        chunk.requires_grad_(False)
    n = sum(p.numel() for c in chunks for p in c.parameters())
    log.info("teacher %s: %d layers, hidden %d, %.2fM parameters on this rank, frozen", source,
             tcfg.model.num_layers, tcfg.model.hidden_size, n / 1e6)
    return Teacher(chunks, config, source)


def _inputs(batch: dict, model, layout: PackedLayout):
    """(the micro-batch's inputs on the device, the model's positional arguments, the model inside DDP)."""
    b = model_inputs(batch, layout, "cuda" if torch.cuda.is_available() else "cpu")
    return b, (b["tokens"], b["position_ids"], b["attention_mask"]), unwrap(model)


def _no_loss(output_tensor):
    zero = torch.zeros((), device=output_tensor.device)
    return zero, torch.tensor(0, dtype=torch.int, device=zero.device), {}


@torch.no_grad()
def teacher_outputs(teacher: Teacher, batches: list, layout: PackedLayout, seq_length: int, micro_batch_size: int,
                    whole: bool) -> dict:
    """The teacher's final hidden states per micro-batch on its last pipeline stage: the supervised tokens' [n, h]
    (whole=False), or every token's as the output layer takes them (whole=True); and its output layer's weight."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    out = {"hidden": [], "weight": None, "model": None}

    def forward_step(data_iterator, model):
        b, args, gpt = _inputs(next(data_iterator), model, layout)
        if not gpt.post_process:
            return model(*args, packed_seq_params=b["packed_seq_params"]), _no_loss
        with hidden_states_instead_of_logits(gpt) as seen:
            hidden = model(*args, packed_seq_params=b["packed_seq_params"])  # [b, s, h]
        out["weight"], out["model"] = seen["weight"], gpt
        if whole:
            out["hidden"].append(hidden.transpose(0, 1).contiguous())  # [s, b, h], the output layer's input
        else:
            out["hidden"].append(select_supervised(hidden, b["labels"], b["loss_mask"],
                                                   teacher.config.sequence_parallel)[0])
        return hidden.new_zeros(()), _no_loss

    seq_length, micro_batch_size = layout.schedule_shape(seq_length, micro_batch_size)
    get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter(batches), model=teacher.chunks,
                                num_microbatches=len(batches), seq_length=seq_length,
                                micro_batch_size=micro_batch_size, forward_only=True)
    return out


def _cp_sum(values: torch.Tensor) -> torch.Tensor:
    from megatron.core import parallel_state as ps

    if ps.get_context_parallel_world_size() > 1:
        from megatron_sft.runtime.distributed import collective_device

        values = values.to(collective_device())
        torch.distributed.all_reduce(values, group=ps.get_context_parallel_group())
    return values.cpu()


def _lm_ratio(kd_sum, ce_sum) -> float:
    """skip_lm_loss false: the KD loss is rescaled to the LM loss's size (modelopt 0.46's balancer), per
    micro-batch; summed over context-parallel ranks first, so every layout gets the same ratio."""
    kd, ce = _cp_sum(torch.stack([kd_sum.detach(), ce_sum.detach()]).double()).tolist()
    return ce / kd if kd > 0 and ce > 0 else 1.0


def make_kd_forward_step(layout: PackedLayout, settings: KdSettings, teacher_out: dict, lm_head_chunk_size: int,
                         sequence_parallel: bool, neftune=None, n_sources: int = 0):
    """Megatron's forward_step_func of the student: the loss on the last stage as the module docstring says;
    `neftune`: noise on the student's input embeddings (the teacher sees the data as it is). `n_sources` > 1: each
    micro-batch also reports each source's share of the objective (training/sources.py)."""
    hidden_iter = iter(teacher_out["hidden"])
    temperature = settings.temperature

    def forward_step(data_iterator, model):
        raw = next(data_iterator)
        b, args, gpt = _inputs(raw, model, layout)
        with noisy_embeddings(gpt, input_noise(raw, gpt, neftune, layout, sequence_parallel)):
            return _student_forward(model, gpt, raw, b, args)

    def _student_forward(model, gpt, raw, b, args):
        if not gpt.post_process:
            return model(*args, packed_seq_params=b["packed_seq_params"]), _no_loss
        t_hidden = next(hidden_iter)
        if lm_head_chunk_size:
            total, kd_sum, ce_sum, w_kd, w_ce, per_token, positions = _chunked(
                model, gpt, b, args, t_hidden, teacher_out["weight"], settings, lm_head_chunk_size, sequence_parallel,
                n_sources > 1)
        else:
            logits = model(*args, packed_seq_params=b["packed_seq_params"]).transpose(0, 1)  # [s, b, V/TP]
            t_logits = teacher_out["model"].output_layer(t_hidden, weight=teacher_out["weight"])[0]
            kd, ce, *whole = full_logits_kd_terms(logits, t_logits, b["labels"], b["loss_mask"], temperature,
                                                  gpt.config, per_token=n_sources > 1)
            kd_sum, ce_sum = kd.detach(), ce.detach()
            w_kd, w_ce = _weights(settings, kd_sum, ce_sum)
            total = w_kd * kd + w_ce * ce
            per_token = positions = None
            if whole:  # [b, s, 2] -> the supervised tokens' rows, [s, b]-flattened as the chunked head orders them
                positions = supervised_positions(b["loss_mask"])
                per_token = at_positions(whole[0], positions)
        mask = b["loss_mask"]

        def loss_func(output_tensor):
            count = mask.float().sum().to(output_tensor.device)
            report = {"lm loss": torch.stack([output_tensor.detach().float(), count]),
                      "kd metrics": torch.stack([kd_sum.float(), ce_sum.float(), count])}
            return output_tensor, count.to(torch.int), report

        if n_sources > 1:  # each token's share of the objective, as the loss weighs it
            objective = per_token[:, 0] * float(w_kd) + per_token[:, 1] * float(w_ce)
            weights = at_positions(mask, positions)
            loss_func = with_source_report(loss_func, source_report(raw, layout, n_sources, positions, objective,
                                                                    weights))
        return total, loss_func

    return forward_step


def _weights(settings: KdSettings, kd_sum, ce_sum) -> tuple[float, float]:
    """(weight of the KD sum, weight of the CE sum) in the loss."""
    if settings.skip_lm_loss:
        return 1.0, 0.0
    return settings.kd_loss_scale * _lm_ratio(kd_sum, ce_sum), 1.0


def _chunked(model, gpt, b, args, t_hidden, t_weight, settings, chunk_size, sequence_parallel, per_token: bool):
    """(loss with gradients, KD sum, CE sum, KD weight, CE weight, each supervised token's (KD, CE) or None, their
    positions) through the chunked head."""
    with hidden_states_instead_of_logits(gpt) as seen:
        hidden = model(*args, packed_seq_params=b["packed_seq_params"])
    selected, targets, token_weights, positions = select_supervised(hidden, b["labels"], b["loss_mask"],
                                                                    sequence_parallel)
    weight, temperature = seen["weight"], settings.temperature
    if settings.skip_lm_loss:
        w_kd, w_ce = 1.0, 0.0
    else:  # the ratio needs both sums before the gradients (written in forward) are: a pass without them first
        with torch.no_grad():
            kd_sum, ce_sum = chunked_kd_loss(selected, weight, t_hidden, t_weight, targets, token_weights,
                                             token_weights, temperature, chunk_size)[1:]
        w_kd, w_ce = _weights(settings, kd_sum, ce_sum)
    tokens = torch.empty(len(targets), 2, dtype=torch.float32, device=selected.device) if per_token else None
    total, kd_sum, ce_sum = chunked_kd_loss(selected, weight, t_hidden, t_weight, targets, token_weights * w_kd,
                                            token_weights * w_ce, temperature, chunk_size, tokens)
    return total, kd_sum, ce_sum, w_kd, w_ce, tokens, positions


def metrics_everywhere(reports: list[dict]) -> dict:
    """The step's KD and LM losses per supervised token: summed over micro-batches and DP x CP ranks; every rank."""
    from megatron_sft.training.loss import report_sums_everywhere

    kd, ce, count = report_sums_everywhere(reports, "kd metrics", 3).tolist()
    count = max(count, 1.0)
    return {"kd_loss": kd / count, "lm_loss": ce / count}


def trainer_class():
    from megatron_sft.training.loop import Trainer
    from megatron_sft.training.step import train_step

    class KdTrainer(Trainer):
        """The SFT Trainer with a teacher: the KD loss, its figures beside the LM loss."""

        def __init__(self, cfg: RunConfig, files=None):
            super().__init__(cfg, files)
            if self.data.weighted:  # the KD loss weighs every supervised token alike: weights would be dropped
                raise UserError(f"distillation takes no message \"weight\" other than 1, and the training data has "
                                f"some (cache {self.data.cache_dir}); remove the weights, or train without a teacher")
            self.settings = read_kd_cfg(self.cfg.kd.export_kd_cfg)
            self.teacher = build_teacher(self.cfg)
            s = self.settings
            log.info("distillation: KL(teacher || student) at temperature %g on the supervised tokens%s",
                     s.temperature, "" if s.skip_lm_loss else f", plus the LM loss (kd_loss_scale {s.kd_loss_scale})")

        def _forward(self, batches: list, neftune=None, n_sources: int = 0):
            cfg, model = self.cfg, self.model
            out = teacher_outputs(self.teacher, batches, model.layout, cfg.data.seq_length,
                                  cfg.training.micro_batch_size, whole=not model.lm_head_chunk_size)
            return make_kd_forward_step(model.layout, self.settings, out, model.lm_head_chunk_size,
                                        model.config.sequence_parallel, neftune, n_sources)

        def train_step(self, batches):
            cfg = self.cfg
            forward = self._forward(batches, self.neftune(), len(self.sources("train")))
            return train_step(self.model, batches, cfg.data.seq_length, cfg.training.micro_batch_size,
                              cfg.training.global_batch_size, forward_step=forward)

        def step_metrics(self, result) -> dict:
            """kd_loss and lm_loss; on a blend, each source's share of the objective (the base class's figures)."""
            return {**metrics_everywhere(result.reports), **super().step_metrics(result)}

        def sources(self, split: str) -> list[str]:
            # validation reports the LM loss, as Megatron-LM does for distillation: no per-source objective there
            return super().sources(split) if split == "train" else []

        def evaluate(self, eval_iters: int) -> tuple[float, dict]:
            """The validation LM loss (as Megatron-LM reports it for distillation), its perplexity and the KD loss."""
            import math

            reports = self.validation_reports(eval_iters, lambda group: (group, self._forward(group)))
            figures = metrics_everywhere(reports)
            lm = figures["lm_loss"]
            return lm, {"perplexity": math.exp(min(lm, 50.0)), "kd_loss": figures["kd_loss"]}

    return KdTrainer


def with_teacher(cfg: RunConfig) -> RunConfig:
    """A resumed run keeps its teacher and KD settings: recorded ones fill what is not given; another teacher is
    refused (the run would change objective half-way)."""
    import os

    from megatron_sft.checkpointing import layout
    from megatron_sft.training.state import resume_point

    resume = resume_point(cfg)
    if resume is None:
        return cfg
    record = layout.CheckpointDir(resume[0]).run_args() or {}
    recorded = record.get("export_kd_teacher_load")
    given = cfg.kd.export_kd_teacher_load
    if recorded is None:
        return cfg
    if given and os.path.realpath(given) != os.path.realpath(recorded):
        raise UserError(f"{FLAG} {given}: the run being resumed ({resume[0]}) distills from {recorded}; give that "
                        "teacher, or start a new run (another --save)")
    if given is None:
        log.info("resuming a distillation run: teacher %s (recorded)", recorded)
    return cfg.replace(export_kd_teacher_load=recorded,
                       export_kd_cfg=cfg.kd.export_kd_cfg or record.get("export_kd_cfg"),
                       export_kd_teacher_model_config=(cfg.kd.export_kd_teacher_model_config
                                                       or record.get("export_kd_teacher_model_config")))
