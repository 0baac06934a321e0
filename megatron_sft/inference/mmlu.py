"""MMLU on Megatron model chunks: the predicted answer is the letter whose token has the highest logit at
the last prompt position. Works at any TP/PP layout (collective: every rank calls evaluate)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from megatron_sft.inference.comm import broadcast_tokens, chooser_rank, is_chooser
from megatron_sft.inference.logits import forward_logits
from megatron_sft.inference.mmlu_data import LETTERS, Split
from megatron_sft.inference.mmlu_prompts import letter_token_ids, question_prompts, subsample
from megatron_sft.inference.mmlu_report import summarize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MMLUOptions:
    few_shot: int = 0
    fraction: float = 1.0
    seed: int = 1234
    chat_template: bool = False
    enable_thinking: bool = False
    batch_size: int = 8
    max_tokens: int = 4096  # few-shot examples are dropped until a prompt fits
    pad_id: int = 0
    device: str = "cpu"


def score(chunks: list, prompts: list[list[int]], letter_ids: list[int], opts: MMLUOptions) -> list[int]:
    """Index (0-3) of the highest-logit letter at each prompt's last position, on every rank."""
    src = chooser_rank()
    # Similar lengths together: less padding. Padding goes on the right, after the position read, so
    # causal attention keeps it out of the result without any mask.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    choices = [0] * len(prompts)
    letters = torch.tensor(letter_ids)
    for first in range(0, len(order), opts.batch_size):
        rows = order[first:first + opts.batch_size]
        longest = max(len(prompts[i]) for i in rows)
        tokens = torch.full((len(rows), longest), opts.pad_id, dtype=torch.int64)
        for r, i in enumerate(rows):
            tokens[r, : len(prompts[i])] = torch.tensor(prompts[i])
        last = torch.tensor([len(prompts[i]) - 1 for i in rows], dtype=torch.int64)
        logits = forward_logits(chunks, tokens.to(opts.device), select=last.to(opts.device))
        picked = logits[:, 0, letters.to(logits.device)].argmax(-1).cpu() if is_chooser(src) else None
        for i, choice in zip(rows, broadcast_tokens(picked, len(rows), src).tolist()):
            choices[i] = choice
    return choices


def evaluate(chunks: list, tokenizer, test: Split, dev: Split, opts: MMLUOptions) -> dict:
    """Accuracy report (see mmlu_report.summarize) over the (sub-sampled) test questions."""
    letter_ids = letter_token_ids(tokenizer, leading_space=not opts.chat_template)
    predictions, answers = {}, {}
    for subject, questions in test.items():
        kept = [questions[i] for i in subsample(len(questions), opts.fraction, subject, opts.seed)]
        prompts = question_prompts(tokenizer, kept, dev.get(subject, []), opts.few_shot, opts.max_tokens,
                                   chat_template=opts.chat_template, enable_thinking=opts.enable_thinking)
        choices = score(chunks, prompts, letter_ids, opts)
        predictions[subject] = [LETTERS[c] for c in choices]
        answers[subject] = [q.answer for q in kept]
        correct = sum(p == a for p, a in zip(predictions[subject], answers[subject]))
        log.info("MMLU %-40s %d/%d", subject, correct, len(kept))
    return summarize(predictions, answers)
