"""The README's real-model task: answer "What is the capital of X?" as JSON (megatron_sft/tasks/capitals.py).

    python tools/make_capitals_task.py build --out DIR
        DIR/train.jsonl     48 countries x 5 phrasings of the question, answered {"country": ..., "capital": ...}
        DIR/heldout.jsonl   16 countries never trained on, each prompt ending in its expected answer
    python tools/make_capitals_task.py report --before before.jsonl --after after.jsonl [--min-format 0.8]
        prints each held-out question with the answers before and after fine-tuning, and the rates of answers
        in the trained format (JSON naming the country asked about) and of exactly expected answers

`report` reads the --output files of examples/generate.py (each record carries its prompt's reference answer).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from megatron_sft.tasks.capitals import build, score


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def report(before: Path, after: Path, min_format: float | None) -> int:
    rows = list(zip(_records(before), _records(after)))
    if not rows or len(_records(before)) != len(_records(after)):
        print(f"error: {before} and {after} must hold the same, non-empty list of answers", file=sys.stderr)
        return 2
    totals = {"before": [0, 0], "after": [0, 0]}
    for b, a in rows:
        print(f"Q: {a['messages'][-1]['content']}")
        for name, record in (("before", b), ("after", a)):
            fmt, exact = score(record["completion"], a["reference"])
            totals[name][0] += fmt
            totals[name][1] += exact
            mark = "exact" if exact else "format" if fmt else "--"
            print(f"   {name:<6} [{mark:<6}] {_short(record['completion'], 100)}")
    n = len(rows)
    for name, (fmt, exact) in totals.items():
        print(f"{name} fine-tuning: {fmt}/{n} answers in the trained format, {exact}/{n} exactly as expected")
    rate = totals["after"][0] / n
    if min_format is not None and rate < min_format:
        print(f"error: {rate:.0%} of answers in the trained format after fine-tuning, below --min-format "
              f"{min_format:.0%}", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write train.jsonl and heldout.jsonl")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--heldout", type=int, default=16)
    b.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("report", help="compare generate.py outputs before and after fine-tuning")
    r.add_argument("--before", type=Path, required=True)
    r.add_argument("--after", type=Path, required=True)
    r.add_argument("--min-format", type=float, default=None, help="exit 1 when fewer answers after are in format")
    cli = parser.parse_args()
    if cli.command == "build":
        paths = build(cli.out, cli.heldout, cli.seed)
        print(f"capitals task in {cli.out}: {sum(1 for _ in open(paths['train']))} training conversations, "
              f"{cli.heldout} held-out questions")
        return 0
    return report(cli.before, cli.after, cli.min_format)


if __name__ == "__main__":
    sys.exit(main())
