"""The embedded preference task, for DPO after the demo's fine-tuning (examples/demo_dpo.sh).

A prompt names two numbers with as many digits, "pick: 372 815"; the answer repeats one of them. The chosen answer
is the larger number, wherever it stands; the rejected one is the other. The fine-tuned demo model (it only ever
reversed strings of letters) has no reason to prefer either: the larger number is first in half the pairs and
both answers have the same length, so its preference accuracy starts near 50%. DPO has to teach it the rule; the
held-out pairs' numbers are never trained on. Both answers of a pair are digits, so what DPO shifts is which digit
comes first, not letters against digits: the reversal task the model was fine-tuned on is left alone.

`preference_accuracy` scores a Hugging Face model with transformers (independent of this project's Megatron
code): the share of pairs whose chosen answer has the higher summed log-probability given the prompt, rendered
with the model's chat template as training renders it.
"""

from __future__ import annotations

import json
import pathlib
import random

DIGITS = "0123456789"


def _number(rng: random.Random, first: int, length: int) -> str:
    return str(first) + "".join(rng.choice(DIGITS) for _ in range(length - 1))


def preference_pairs(n: int, rng: random.Random, banned: set[str]) -> list[dict]:
    """n pairs in TRL's conversational format; their numbers are added to `banned` (never reused)."""
    pairs = []
    while len(pairs) < n:
        length = rng.randint(2, 4)
        low, high = sorted(rng.sample(range(1, 10), 2))  # the first digits differ: the rule is never a tie
        big, small = _number(rng, high, length), _number(rng, low, length)
        if big in banned or small in banned:
            continue
        banned.update((big, small))
        words = [big, small] if rng.random() < 0.5 else [small, big]
        pairs.append({"prompt": [{"role": "user", "content": f"pick: {words[0]} {words[1]}"}],
                      "chosen": [{"role": "assistant", "content": big}],
                      "rejected": [{"role": "assistant", "content": small}]})
    return pairs


def build_preference_task(out_dir: str | pathlib.Path, n_train: int = 2000, n_heldout: int = 100,
                          seed: int = 0) -> dict[str, pathlib.Path]:
    """prefs.jsonl (training pairs) and prefs_heldout.jsonl (pairs with numbers training never sees) in out_dir."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng, seen = random.Random(seed), set()
    heldout = preference_pairs(n_heldout, rng, seen)
    train = preference_pairs(n_train, rng, seen)
    paths = {"train": out / "prefs.jsonl", "heldout": out / "prefs_heldout.jsonl"}
    for name, rows in (("train", train), ("heldout", heldout)):
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return paths


def response_logp(model, tokenizer, prompt: list[dict], response: list[dict]) -> float:
    """Summed log-probability of the response's tokens after the prompt (chat template, as training renders)."""
    import torch

    context = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    whole = tokenizer.apply_chat_template(prompt + response, tokenize=False)
    if not whole.startswith(context):
        raise ValueError("the chat template renders the prompt differently inside the conversation")
    ids = tokenizer(whole, add_special_tokens=False, return_tensors="pt").input_ids
    start = len(tokenizer(context, add_special_tokens=False).input_ids)
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits[0, :-1].float()  # NemotronH cannot build its cache here
    logp = torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None])[:, 0]
    return float(logp[start - 1:].sum())


def preference_accuracy(model_dir: str | pathlib.Path, pairs_path: str | pathlib.Path) -> tuple[int, int]:
    """(pairs whose chosen answer the model prefers, pairs) under transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per load would bury the one line this prints
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").eval()
    rows = [json.loads(line) for line in pathlib.Path(pairs_path).read_text(encoding="utf-8").splitlines() if line]
    wins = sum(response_logp(model, tokenizer, r["prompt"], r["chosen"])
               > response_logp(model, tokenizer, r["prompt"], r["rejected"]) for r in rows)
    return wins, len(rows)
