"""MMLU prompts in the standard raw-text format, the answer-letter tokens, and deterministic sub-sampling.

    The following are multiple choice questions (with answers) about <subject>.

    <dev question>
    A. ...
    B. ...
    C. ...
    D. ...
    Answer: <letter>

    <test question>
    ...
    Answer:
"""

from __future__ import annotations

import random
import zlib

from megatron_sft.errors import UserError
from megatron_sft.inference.mmlu_data import LETTERS, Question


def format_question(q: Question, with_answer: bool) -> str:
    lines = [q.question] + [f"{letter}. {choice}" for letter, choice in zip(LETTERS, q.choices)]
    text = "\n".join(lines) + "\nAnswer:"
    return text + f" {q.answer}\n\n" if with_answer else text


def build_prompt(q: Question, shots: list[Question]) -> str:
    header = f"The following are multiple choice questions (with answers) about {q.subject.replace('_', ' ')}.\n\n"
    return header + "".join(format_question(s, True) for s in shots) + format_question(q, False)


def letter_token_ids(tokenizer, leading_space: bool) -> list[int]:
    """The token the model would write next for each letter.

    After "Answer:" the natural next token is " A" when the vocabulary has it as one token (Qwen,
    Llama 3); otherwise (and after a chat template's assistant header) it is the bare letter.
    """
    if leading_space:
        spaced = [tokenizer.encode(" " + letter, add_special_tokens=False) for letter in LETTERS]
        if all(len(ids) == 1 for ids in spaced):
            return [ids[0] for ids in spaced]
    bare = [tokenizer.encode(letter, add_special_tokens=False) for letter in LETTERS]
    if not all(len(ids) == 1 for ids in bare):
        raise UserError(f"the tokenizer splits the answer letters A-D into several tokens ({bare}); "
                        "MMLU scoring needs one token per letter")
    return [ids[0] for ids in bare]


def subsample(count: int, fraction: float, subject: str, seed: int) -> list[int]:
    """Indices of the questions kept: the same ones on every run, rank and machine for a given seed."""
    if not 0.0 < fraction <= 1.0:
        raise UserError(f"--fraction {fraction}: must be in (0, 1]")
    if fraction == 1.0:
        return list(range(count))
    keep = max(1, round(count * fraction))
    # crc32, not hash(): str hashes change from process to process.
    rng = random.Random(seed * 1_000_003 + zlib.crc32(subject.encode()))
    return sorted(rng.sample(range(count), keep))


def encode_prompt(tokenizer, text: str, *, chat_template: bool, enable_thinking: bool) -> list[int]:
    if chat_template:
        if not tokenizer.chat_template:
            raise UserError("--chat-template-prompts: the tokenizer has no chat template")
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True, enable_thinking=enable_thinking)
        return list(tokenizer.encode(text, add_special_tokens=False))
    return list(tokenizer.encode(text, add_special_tokens=True))


def question_prompts(tokenizer, questions: list[Question], dev: list[Question], few_shot: int, max_tokens: int, *,
                     chat_template: bool = False, enable_thinking: bool = False) -> list[list[int]]:
    """Token ids per question; the few-shot examples are the subject's first dev questions, dropped from
    the end while the prompt is longer than max_tokens (as the reference evaluation does)."""
    prompts = []
    for q in questions:
        k = min(few_shot, len(dev))
        while True:
            ids = encode_prompt(tokenizer, build_prompt(q, dev[:k]), chat_template=chat_template,
                                enable_thinking=enable_thinking)
            if len(ids) <= max_tokens or k == 0:
                break
            k -= 1
        prompts.append(ids)
    return prompts
