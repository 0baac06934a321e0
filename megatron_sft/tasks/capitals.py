"""Capitals as JSON: a task a pretrained chat model learns in a few dozen steps, with a visible effect.

Asked "What is the capital of Peru?", an instruct model answers in a sentence; after fine-tuning it answers
`{"country": "Peru", "capital": "Lima"}`. The held-out countries are never trained on, so the new format on
them shows the model learned the task, not the examples. `report` scores each answer on the format (valid JSON
naming the country asked about) and on the exact expected answer (which also needs the model to know the capital).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

# (country, capital): well-known pairs; the order is fixed so a seed picks the same held-out set everywhere.
COUNTRIES = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Portugal", "Lisbon"),
    ("United Kingdom", "London"), ("Ireland", "Dublin"), ("Netherlands", "Amsterdam"), ("Belgium", "Brussels"),
    ("Austria", "Vienna"), ("Switzerland", "Bern"), ("Poland", "Warsaw"), ("Czech Republic", "Prague"),
    ("Hungary", "Budapest"), ("Greece", "Athens"), ("Sweden", "Stockholm"), ("Norway", "Oslo"),
    ("Denmark", "Copenhagen"), ("Finland", "Helsinki"), ("Russia", "Moscow"), ("Ukraine", "Kyiv"),
    ("Turkey", "Ankara"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Nigeria", "Abuja"), ("Ghana", "Accra"),
    ("Ethiopia", "Addis Ababa"), ("Morocco", "Rabat"), ("South Africa", "Pretoria"), ("Japan", "Tokyo"),
    ("China", "Beijing"), ("South Korea", "Seoul"), ("India", "New Delhi"), ("Pakistan", "Islamabad"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"), ("Philippines", "Manila"),
    ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Saudi Arabia", "Riyadh"), ("Israel", "Jerusalem"),
    ("Australia", "Canberra"), ("New Zealand", "Wellington"), ("Canada", "Ottawa"), ("United States", "Washington"),
    ("Mexico", "Mexico City"), ("Cuba", "Havana"), ("Brazil", "Brasilia"), ("Argentina", "Buenos Aires"),
    ("Chile", "Santiago"), ("Peru", "Lima"), ("Colombia", "Bogota"), ("Venezuela", "Caracas"),
    ("Romania", "Bucharest"), ("Bulgaria", "Sofia"), ("Serbia", "Belgrade"), ("Croatia", "Zagreb"),
    ("Iceland", "Reykjavik"), ("Afghanistan", "Kabul"), ("Nepal", "Kathmandu"), ("Bangladesh", "Dhaka"),
    ("Malaysia", "Kuala Lumpur"), ("Singapore", "Singapore"),
]
QUESTIONS = [
    "What is the capital of {}?",
    "Which city is the capital of {}?",
    "Tell me the capital city of {}.",
    "{}: what is its capital?",
    "Name the capital of {}.",
]


def answer(country: str, capital: str) -> str:
    return json.dumps({"country": country, "capital": capital})


def split(n_heldout: int, seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    pairs = list(COUNTRIES)
    random.Random(seed).shuffle(pairs)
    return pairs[n_heldout:], pairs[:n_heldout]


def build(out_dir: str | Path, n_heldout: int = 16, seed: int = 0) -> dict[str, Path]:
    """train.jsonl (every phrasing of each training country) and heldout.jsonl (prompts ending in the expected
    answer, as examples/generate.py --prompts-file reads them)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, heldout = split(n_heldout, seed)
    paths = {"train": out / "train.jsonl", "heldout": out / "heldout.jsonl"}
    with open(paths["train"], "w", encoding="utf-8") as f:
        for country, capital in train:
            for question in QUESTIONS:
                f.write(json.dumps({"messages": [{"role": "user", "content": question.format(country)},
                                                 {"role": "assistant", "content": answer(country, capital)}]}) + "\n")
    with open(paths["heldout"], "w", encoding="utf-8") as f:
        for i, (country, capital) in enumerate(heldout):
            question = QUESTIONS[i % len(QUESTIONS)].format(country)
            f.write(json.dumps({"messages": [{"role": "user", "content": question},
                                             {"role": "assistant", "content": answer(country, capital)}]}) + "\n")
    return paths


def score(completion: str, reference: str) -> tuple[bool, bool]:
    """(format, exact): the answer is JSON naming the asked country and a capital; the answer is the reference."""
    expected = json.loads(reference)
    try:
        given = json.loads(completion.strip())
    except ValueError:
        return False, False
    ok = isinstance(given, dict) and set(given) == {"country", "capital"} and given["country"] == expected["country"]
    return ok, ok and given == expected
