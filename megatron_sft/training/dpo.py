"""Preference training (DPO) on the SFT stack: the same data pipeline (each pair's chosen and rejected sequences side
by side in one pack, data/preference.py), model, layouts, checkpoints and Trainer; another loss.

Per micro-batch, on the last pipeline stage:
  1. each supervised token's log-probability (the chunked head's no-grad pass, or the model's per-token loss), summed
     per sequence; under context parallelism the ranks' partial sums are added (every rank then has whole sums);
  2. the pairs' losses (training/dpo_loss.py) from those sums and the reference's (computed once, before training,
     by the starting model: reference_logps), as this micro-batch's share of the global batch's loss;
  3. d(loss)/d(sequence log-prob) per sequence, by autograd on those few numbers; the model's gradient is then
     sum_t g_seq(t) * d logp_t over this rank's tokens: a weighted token loss (the chunked head's weights, or the
     per-token losses times the weights) whose value is replaced by the loss share.
Megatron's per-token normalisation is given a count of 1 for the whole step (the shares are already normalised),
so the loss and gradients are the mean over the global batch's pairs whatever the layout.
"""

from __future__ import annotations

import itertools
import logging
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from megatron_sft.config import RunConfig
from megatron_sft.models.builder import unwrap
from megatron_sft.training.dpo_loss import METRICS, DpoSettings, metric_sums, pair_losses, step_loss
from megatron_sft.training.inputs import PackedLayout, model_inputs
from megatron_sft.training.lm_head import (
    at_positions,
    hidden_states_instead_of_logits,
    select_supervised,
    supervised_positions,
    token_losses,
    weighted_token_loss,
)
from megatron_sft.training.sources import with_source_report

log = logging.getLogger(__name__)


@dataclass
class StepTotals:
    """What normalises a step: the global batch's pairs and chosen supervised tokens (all DP ranks)."""

    pairs: int
    chosen_tokens: int


def segments(batch: dict) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """(segment of each token of the joined stream, sample id of each segment (-1: padding), supervised tokens per
    segment) of a collated micro-batch."""
    from megatron_sft.data.batch import join_rows

    stream = join_rows(batch)
    cu = torch.as_tensor(stream["cu_seqlens_padded"]).long()
    lengths = cu[1:] - cu[:-1]
    token_segment = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    ids: list[int] = []
    for row_ids, padding in zip(batch["sample_ids"], batch["num_padding"].tolist()):
        ids += [int(i) for i in row_ids] + ([-1] if padding else [])
    supervised = torch.zeros(len(lengths), dtype=torch.float64).index_add_(
        0, token_segment, stream["loss_mask"].reshape(-1).double())
    return token_segment, ids, supervised


def step_totals(batches: list[dict]) -> StepTotals:
    """Pairs and chosen supervised tokens of the global batch (this rank's micro-batches, summed over DP)."""
    from megatron.core import parallel_state as ps

    from megatron_sft.runtime.distributed import collective_device

    pairs = chosen = 0
    for batch in batches:
        _, ids, supervised = segments(batch)
        pairs += sum(1 for i in ids if i >= 0 and i % 2 == 0)
        chosen += int(sum(float(supervised[k]) for k, i in enumerate(ids) if i >= 0 and i % 2 == 0))
    counts = torch.tensor([pairs, chosen], dtype=torch.float64, device=collective_device())
    torch.distributed.all_reduce(counts, group=ps.get_data_parallel_group())
    return StepTotals(int(counts[0]), int(counts[1]))


def _pairs(ids: list[int], policy: torch.Tensor, supervised: torch.Tensor, reference: np.ndarray) -> dict:
    """Per pair of the micro-batch (segments 2k, 2k+1 of samples 2p, 2p+1): the tensors dpo_loss reads."""
    chosen = [k for k, i in enumerate(ids) if i >= 0 and i % 2 == 0]
    rejected = [k + 1 for k in chosen]
    assert all(ids[r] == ids[c] + 1 for c, r in zip(chosen, rejected)), "a pair split across segments"
    ref = torch.tensor(reference[[ids[k] for k in chosen + rejected]], dtype=policy.dtype)
    n = len(chosen)
    return {"policy_chosen": policy[chosen], "policy_rejected": policy[rejected], "ref_chosen": ref[:n],
            "ref_rejected": ref[n:], "tokens_chosen": supervised[chosen].to(policy.dtype),
            "tokens_rejected": supervised[rejected].to(policy.dtype)}


def _context_parallel_sum(values: torch.Tensor) -> torch.Tensor:
    from megatron.core import parallel_state as ps

    if ps.get_context_parallel_world_size() > 1:
        values = values.clone()
        torch.distributed.all_reduce(values, group=ps.get_context_parallel_group())
    return values


@dataclass
class SequenceLogps:
    """One micro-batch on the last pipeline stage: each supervised token's log-prob (this rank's tokens) and what
    turns them into per-sequence sums and back into token weights."""

    ids: list[int]  # sample id per segment of the micro-batch (-1: padding)
    supervised: torch.Tensor  # supervised tokens per segment (the whole micro-batch)
    logp: torch.Tensor  # [n] this rank's supervised tokens; with gradients on the per-token-loss path
    segment: torch.Tensor  # [n] each token's segment
    head: tuple | None  # chunked head: (selected hidden states, output weight, targets, chunk size)

    def sums(self) -> torch.Tensor:
        """Per-segment sums over every context-parallel rank's tokens, float64, on the CPU, without gradients."""
        sums = torch.zeros(len(self.ids), dtype=torch.float64, device=self.logp.device)
        return _context_parallel_sum(sums.index_add_(0, self.segment, self.logp.detach().double())).cpu()

    def weighted(self, per_segment: torch.Tensor) -> torch.Tensor:
        """sum_t w_seg(t) * logp_t over this rank's tokens, with its gradient (the chunked head's token weights)."""
        token_w = per_segment.to(self.logp.device).index_select(0, self.segment).float()
        if self.head is None:
            return (token_w * self.logp).sum()
        selected, weight, targets, chunk = self.head
        return weighted_token_loss(selected, weight, targets, -token_w, chunk)  # CE_t = -logp_t


def sequence_logps(model, batch: dict, layout: PackedLayout, lm_head_chunk_size: int, sequence_parallel: bool):
    """(SequenceLogps, None) on the last pipeline stage; (None, the stage's output) before it."""
    from megatron_sft.data.batch import join_rows
    from megatron_sft.ops.context_parallel import context_parallel_indices

    b = model_inputs(batch, layout, "cuda" if torch.cuda.is_available() else "cpu")
    args = (b["tokens"], b["position_ids"], b["attention_mask"])
    gpt = unwrap(model)
    if not gpt.post_process:
        return None, model(*args, packed_seq_params=b["packed_seq_params"])
    token_segment, ids, supervised = segments(batch)
    if layout.cp_size > 1:
        cu = torch.as_tensor(join_rows(batch)["cu_seqlens_padded"]).long()
        token_segment = token_segment[context_parallel_indices(cu, layout.cp_size, layout.cp_rank)]
    head = None
    if lm_head_chunk_size:
        with hidden_states_instead_of_logits(gpt) as output_layer:
            hidden = model(*args, packed_seq_params=b["packed_seq_params"])
        selected, targets, _, positions = select_supervised(hidden, b["labels"], b["loss_mask"], sequence_parallel)
        logp = -token_losses(selected, output_layer["weight"], targets, lm_head_chunk_size)
        head = (selected, output_layer["weight"], targets, lm_head_chunk_size)
    else:
        per_token = model(*args, labels=b["labels"], packed_seq_params=b["packed_seq_params"])
        positions = supervised_positions(b["loss_mask"])
        logp = -at_positions(per_token, positions).float()
    segment = token_segment.to(positions.device).index_select(0, positions)
    return SequenceLogps(ids, supervised, logp, segment, head), None


def make_dpo_forward_step(layout: PackedLayout, settings: DpoSettings, reference: np.ndarray, totals: StepTotals,
                          lm_head_chunk_size: int, sequence_parallel: bool, n_sources: int = 0):
    """Megatron's forward_step_func for DPO (see the module docstring). `n_sources` > 1: each micro-batch also
    reports each source's pairs, their summed DPO losses and chosen tokens (training/sources.py's fields)."""
    from megatron.core import parallel_state as ps

    def forward_step(data_iterator, model):
        batch = next(data_iterator)
        seq, output = sequence_logps(model, batch, layout, lm_head_chunk_size, sequence_parallel)
        if seq is None:
            return output, None
        policy = seq.sums().requires_grad_(True)
        with torch.enable_grad():  # also in evaluation (no_grad): the weights come from these few numbers
            pairs = _pairs(seq.ids, policy, seq.supervised, reference)
            share = step_loss(settings, pairs, -pairs["policy_chosen"].sum(), totals.pairs, totals.chosen_tokens)
            (grad,) = torch.autograd.grad(share, policy, allow_unused=True)
        surrogate = seq.weighted(torch.zeros(len(seq.ids), dtype=torch.float64) if grad is None else grad)
        first = ps.get_context_parallel_rank() == 0
        value = share.detach().to(surrogate.device, surrogate.dtype) if first else surrogate.new_zeros(())
        output = surrogate - surrogate.detach() + value
        sums_report = metric_sums(settings, *(pairs[k].detach() for k in ("policy_chosen", "policy_rejected",
                                                                          "ref_chosen", "ref_rejected")))
        report = torch.tensor([float(sums_report[m]) if first else 0.0 for m in METRICS]
                              + [len(pairs["policy_chosen"]) if first else 0], dtype=torch.float64)
        counted = bool(batch.get("count_step")) and first

        def loss_func(output_tensor):
            count = torch.tensor(1 if counted else 0, dtype=torch.int, device=output_tensor.device)
            shown = torch.stack([output_tensor.detach().float(), count.float()])
            return output_tensor, count, {"lm loss": shown, "dpo metrics": report}

        if n_sources > 1:
            by_source = _pair_source_sums(settings, batch, seq.ids, pairs, n_sources) if first else None
            loss_func = with_source_report(loss_func, torch.zeros(n_sources, 4, dtype=torch.float64)
                                           if by_source is None else by_source)
        return output, loss_func

    return forward_step


def _pair_source_sums(settings: DpoSettings, batch: dict, ids: list[int], pairs: dict, n_sources: int):
    """[n_sources, 4] of a micro-batch's pairs, by their chosen sample's source: summed DPO losses (the preference
    term, without --dpo-sft-weight's NLL), pairs, chosen tokens, pairs."""
    source_of = {int(i): int(s) for row_ids, row_sources in zip(batch["sample_ids"], batch["sample_sources"])
                 for i, s in zip(row_ids.tolist(), row_sources.tolist())}
    source = torch.tensor([source_of[i] for i in ids if i >= 0 and i % 2 == 0], dtype=torch.int64)
    losses = pair_losses(settings, *(pairs[k].detach() for k in ("policy_chosen", "policy_rejected", "ref_chosen",
                                                                    "ref_rejected", "tokens_chosen",
                                                                    "tokens_rejected")))
    out = torch.zeros(n_sources, 4, dtype=torch.float64)
    ones = torch.ones(len(source), dtype=torch.float64)
    for column, values in enumerate((losses.double().cpu(), ones, pairs["tokens_chosen"].double().cpu(), ones)):
        out[:, column].index_add_(0, source, values)
    return out


def make_reference_forward_step(layout: PackedLayout, lm_head_chunk_size: int, sequence_parallel: bool,
                                out: torch.Tensor):
    """forward_step of the reference pass: each sequence's summed log-probability into out[sample id] (written on
    the last pipeline stage by tensor- and context-parallel rank 0; zeros elsewhere, so a sum over ranks is exact)."""
    from megatron.core import parallel_state as ps

    def forward_step(data_iterator, model):
        batch = next(data_iterator)
        seq, output = sequence_logps(model, batch, layout, lm_head_chunk_size, sequence_parallel)
        if seq is None:
            return output, None
        sums = seq.sums()
        if ps.get_tensor_model_parallel_rank() == 0 and ps.get_context_parallel_rank() == 0:
            for k, sample in enumerate(seq.ids):
                if sample >= 0:
                    out[sample] = sums[k]
        logp = seq.logp

        def loss_func(output_tensor):
            zero = torch.zeros((), device=logp.device)
            return zero, torch.tensor(0, dtype=torch.int, device=logp.device), {}

        return logp.new_zeros(()), loss_func

    return forward_step


def compute_reference_logps(model, prepared, cfg: RunConfig) -> np.ndarray:
    """Every sample's summed response log-probability under `model` (eval mode): the train and valid packs, pack i
    on data-parallel rank i % DP, --micro-batch-size packs per forward, at the run's own layout; the same array on
    every rank."""
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_sft.data.batch import collate
    from megatron_sft.data.dataset import SFTDataset

    out = torch.zeros(len(prepared), dtype=torch.float64)
    step = make_reference_forward_step(model.layout, model.lm_head_chunk_size, model.config.sequence_parallel, out)
    dp, rank, rows = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank(), cfg.training.micro_batch_size
    seq_length, mbs = model.layout.schedule_shape(cfg.data.seq_length, rows)
    for chunk in model.chunks:
        chunk.eval()
    with torch.no_grad():
        for split in ("train", "valid"):
            ds = SFTDataset.from_prepared(prepared, split, cfg.data)
            mine = list(range(rank, len(ds), dp))
            # every DP rank runs as many passes of as many rows (expert parallelism spans DP ranks: its collectives
            # must pair up, and pipeline stages exchange fixed shapes); the rows short of that are pack 0 again,
            # with no sample id, so nothing of theirs is kept
            most = -(-len(ds) // dp)  # packs of the busiest rank
            for p in range(-(-most // rows)):
                packs = [ds[i] for i in mine[p * rows:(p + 1) * rows]]
                packs += [_unrecorded(ds[0])] * (rows - len(packs))
                batch = [collate(packs, with_attention_mask=not model.layout.thd)]
                get_forward_backward_func()(forward_step_func=step, data_iterator=iter(batch), model=model.chunks,
                                            num_microbatches=1, seq_length=seq_length, micro_batch_size=mbs,
                                            forward_only=True)
    for chunk in model.chunks:
        chunk.train()
    from megatron_sft.runtime.distributed import collective_device

    total = out.to(collective_device())
    torch.distributed.all_reduce(total)
    return total.cpu().numpy()


def _unrecorded(pack: dict) -> dict:
    return dict(pack, sample_ids=torch.full_like(pack["sample_ids"], -1))


REFERENCE_DIR = "reference_logps"


def reference_identity(source: str) -> dict:
    """What names a reference model's weights: its path and its weight files' sizes and times (a Hugging Face
    directory), or its newest checkpoint's (a Megatron checkpoint)."""
    from pathlib import Path

    from megatron_sft.checkpointing import layout

    path = Path(source).resolve()
    if layout.is_megatron_checkpoint(path):
        path, _ = layout.latest_checkpoint_dir(path, None, deep=True)
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".distcp", ".pt"))
    return {"path": str(path), "files": [(str(p.relative_to(path)), p.stat().st_size, int(p.stat().st_mtime))
                                         for p in files]}


def reference_file(cache_dir: str, source: str) -> str:
    import hashlib
    import json
    import os

    key = hashlib.sha256(json.dumps(reference_identity(source), sort_keys=True).encode()).hexdigest()[:20]
    return os.path.join(cache_dir, REFERENCE_DIR, f"{key}.npy")


def load_or_compute_reference(trainer, source: str, cache_dir: str) -> np.ndarray:
    """The reference log-probabilities of a data cache's sequences under `source`: read from the cache when this
    data and this reference were seen before (a rerun, a resume), else computed once (by the starting weights, or
    by the reference's loaded for the pass) and stored atomically beside the data."""
    import os

    from megatron_sft.data.cache import PreparedData

    path = reference_file(cache_dir, source)
    prepared = PreparedData(cache_dir)
    if os.path.isfile(path):
        values = np.load(path)
        if len(values) == len(prepared):
            log.info("reference log-probs: reused %s (%d sequences)", path, len(values))
            return values
    cfg = trainer.cfg
    holds_reference = trainer.state.iteration == 0 and _real(source) == _real(cfg.checkpoint.load)
    if not holds_reference and cfg.is_lora:
        from megatron_sft.errors import UserError

        raise UserError(f"reference log-probs {path} are missing and the adapters have moved since; start the run "
                        "again (MLM_RESUME=0) to compute them from the base")
    log.info("reference log-probs: computing them with %s over %d sequences", source, len(prepared))
    if holds_reference:  # the weights just loaded are the reference
        values = compute_reference_logps(trainer.model, prepared, cfg)
    else:  # another model (--ref-load), or the start of a run that has trained since: its weights for the pass
        with reference_weights(cfg, trainer.model.chunks, source):
            values = compute_reference_logps(trainer.model, prepared, cfg)
    if torch.distributed.get_rank() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp.npy"
        np.save(tmp, values)
        os.replace(tmp, path)
        log.info("reference log-probs: stored %s", path)
    torch.distributed.barrier()
    return values


@contextmanager
def reference_weights(cfg: RunConfig, chunks: list, source: str):
    """Inside, `chunks` hold the weights of `source`; after, their own again, bit for bit and in the same storage
    (Megatron's DDP buffers and the optimizer's copies point into it): a copy on the CPU meanwhile."""
    from megatron_sft.loading import load_reference_weights

    modules = [chunk.module for chunk in chunks]  # inside Megatron's DDP: the modules the weights were loaded into
    tensors = [dict(itertools.chain(m.named_parameters(), m.named_buffers())) for m in modules]
    kept = [{name: t.detach().to("cpu", copy=True) for name, t in named.items()} for named in tensors]
    storage = [t.data_ptr() for named in tensors for t in named.values()]
    load_reference_weights(cfg, modules, source)
    try:
        yield
    finally:
        with torch.no_grad():
            for named, saved in zip(tensors, kept):
                for name, t in named.items():
                    t.copy_(saved[name])
        if storage != [t.data_ptr() for named in tensors for t in named.values()]:
            raise RuntimeError(f"loading the reference {source} replaced the model's tensors instead of copying "
                               "into them; the policy's weights would no longer be the ones trained")


def _trainer_class():
    from megatron_sft.training.loop import Trainer
    from megatron_sft.training.sources import source_figures
    from megatron_sft.training.step import counted_batches, train_step

    class DpoTrainer(Trainer):
        """The SFT Trainer with the DPO step: same data stream, model, checkpoints, logs; rewards in the figures."""

        def __init__(self, cfg: RunConfig, files=None):
            super().__init__(cfg, files)
            d = self.cfg.dpo
            self.settings = DpoSettings(d.dpo_loss_type, d.dpo_beta, d.dpo_label_smoothing, d.dpo_sft_weight)
            data, source = self.data, self.cfg.dpo.ref_load
            self.reference = load_or_compute_reference(self, source, data.cache_dir)
            # the validation pairs: in the same cache (--split), or in their own (--valid-data-path)
            self.valid_reference = (self.reference if data.valid_cache_dir in (None, data.cache_dir)
                                    else load_or_compute_reference(self, source, data.valid_cache_dir))

        def train_step(self, batches):
            cfg = self.cfg
            forward = self._forward(batches, n_sources=len(self.sources("train")))
            return train_step(self.model, counted_batches(batches), cfg.data.seq_length, cfg.training.micro_batch_size,
                              cfg.training.global_batch_size, forward_step=forward)

        def step_metrics(self, result) -> dict:
            """TRL's metrics; on a blend, each source's mean pair loss, chosen tokens and pairs (the base class's)."""
            return {**metrics_everywhere(result.reports), **super().step_metrics(result)}

        def evaluate(self, eval_iters: int) -> tuple[float, dict]:
            """The DPO loss and metrics of the validation pairs (each global batch's mean, averaged)."""
            from megatron_sft.training.step import _loss_everywhere

            names = self.sources("valid")

            def prepare(group):
                group = counted_batches(group)
                return group, self._forward(group, self.valid_reference, len(names))

            reports = self.validation_reports(eval_iters, prepare)
            figures = metrics_everywhere(reports)
            if names:  # each validation source's (file's) mean pair loss
                figures.update({k: v for k, v in source_figures(reports, names).items() if k.startswith("loss/")})
            return _loss_everywhere(reports), figures

        def _forward(self, batches: list, reference: np.ndarray | None = None, n_sources: int = 0):
            reference = self.reference if reference is None else reference
            return make_dpo_forward_step(self.model.layout, self.settings, reference, step_totals(batches),
                                         self.model.lm_head_chunk_size, self.model.config.sequence_parallel, n_sources)

    return DpoTrainer


def metrics_everywhere(reports: list[dict]) -> dict:
    """TRL's metrics of the step: summed over micro-batches and DP x CP ranks, divided by the pairs; every rank."""
    from megatron_sft.training.loss import report_sums_everywhere

    total = report_sums_everywhere(reports, "dpo metrics", len(METRICS) + 1)
    pairs = max(float(total[-1]), 1.0)
    return {name: float(total[k]) / pairs for k, name in enumerate(METRICS)}


def with_reference(cfg: RunConfig) -> RunConfig:
    """cfg with ref_load set: given, recorded by the checkpoint a resume continues, or the starting model."""
    from megatron_sft.checkpointing import layout
    from megatron_sft.errors import UserError
    from megatron_sft.training.state import resume_point

    start_model = cfg.checkpoint.load  # the weights the run starts from (not the HF source a checkpoint records)
    resume = resume_point(cfg)
    if resume is not None:
        recorded = (layout.CheckpointDir(resume[0]).run_args() or {}).get("ref_load")
        if cfg.dpo.ref_load is None and recorded is None:
            raise UserError(f"{resume[0]}: no reference model recorded; give --ref-load (the model the run started "
                            "from)")
        if cfg.dpo.ref_load and recorded and _real(cfg.dpo.ref_load) != _real(recorded):
            raise UserError(f"--ref-load {cfg.dpo.ref_load}: the run being resumed ({resume[0]}) trains against "
                            f"{recorded}; leave --ref-load out, or start a new run (another --save)")
        return cfg.replace(ref_load=cfg.dpo.ref_load or recorded)
    return cfg.replace(ref_load=cfg.dpo.ref_load or start_model)


def _real(path: str | None) -> str | None:
    import os

    return None if path is None else os.path.realpath(path)


def run(cfg: RunConfig) -> int:
    """The dpo app's run (apps.py): 130 when stopped by Ctrl-C or SIGTERM (saved), as finetune."""
    from megatron_sft.cli import EXIT_INTERRUPTED

    return EXIT_INTERRUPTED if train_dpo(cfg).exit.interrupted else 0


def train_dpo(cfg: RunConfig):
    """python -m megatron_sft dpo: preference training, then the usual checkpoint and summary; the Trainer."""
    from megatron_sft.errors import UserError
    from megatron_sft.training.loop import finetune

    if not cfg.checkpoint.load:
        raise UserError("dpo starts from a model: give --load (a fine-tuned checkpoint or a Hugging Face directory)")
    return finetune(with_reference(cfg), _trainer_class())  # ref_load recorded in run_args.json for a resume
