"""The embedded default: a tiny model, its tokenizer and a task it learns in minutes on a CPU.

    python tools/make_embedded_default.py build --out WORKDIR/tiny
        WORKDIR/tiny/hf/              tiny Qwen3 (--kind hybrid: a Nemotron-H hybrid), character-level tokenizer,
                                      ChatML template (HF format)
        WORKDIR/tiny/train.jsonl      chat samples: "reverse: abc" -> "cba" (strings of 1-6 letters)
        WORKDIR/tiny/heldout.jsonl    prompts never seen in training, each ending in the expected answer
    python tools/make_embedded_default.py report --before before.jsonl --after after.jsonl [--min-exact 0.9]
        prints expected / before / after for each held-out prompt, and the exact-match rates
    python tools/make_embedded_default.py prefs --out WORKDIR/tiny
        WORKDIR/tiny/prefs.jsonl          preference pairs: "pick: 372 815" -> the larger number chosen
        WORKDIR/tiny/prefs_heldout.jsonl  pairs whose numbers training never sees
    python tools/make_embedded_default.py prefer --before HF_DIR --after HF_DIR --pairs prefs_heldout.jsonl
        the share of pairs whose chosen answer each model prefers (transformers' log-probabilities)

examples/demo.sh runs build and report around generate.sh and finetune.sh; examples/demo_dpo.sh runs prefs and prefer
(and report) around dpo.sh. `report` reads the --output files of
examples/generate.py (each record carries the reference answer of its prompt) and needs no torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def build(out: Path, n_train: int, n_heldout: int, seed: int, kind: str) -> None:
    from megatron_sft.tiny.charlevel import build_embedded_default

    paths = build_embedded_default(out, n_train, n_heldout, seed, kind)
    print(
        f"embedded default in {out}: model {paths['hf'].name}/, {n_train} training samples "
        f"({paths['train'].name}), {n_heldout} held-out prompts ({paths['heldout'].name})"
    )


def _read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def report(before: Path, after: Path, min_exact: float | None) -> int:
    rows_before, rows_after = _read_records(before), _read_records(after)
    if len(rows_before) != len(rows_after):
        print(f"error: {before} has {len(rows_before)} records, {after} has {len(rows_after)}", file=sys.stderr)
        return 2
    hits = [0, 0]
    print(f"{'prompt':<17} {'expected':<9} {'before':<13} after")
    for b, a in zip(rows_before, rows_after):
        expected = a["reference"].strip()
        answers = [b["completion"].strip(), a["completion"].strip()]
        marks = []
        for i, answer in enumerate(answers):
            hits[i] += answer == expected
            marks.append("ok" if answer == expected else "--")
        shown = [repr(x[:8]) for x in answers]
        print(f"{a['messages'][-1]['content']:<17} {expected:<9} {shown[0]:<10} {marks[0]} {shown[1]:<10} {marks[1]}")
    n = len(rows_after)
    rates = [h / n for h in hits]
    print(
        f"exact answers on {n} held-out prompts: before {hits[0]}/{n} ({rates[0]:.0%}), "
        f"after {hits[1]}/{n} ({rates[1]:.0%})"
    )
    if min_exact is not None and rates[1] < min_exact:
        print(f"error: {rates[1]:.0%} exact after fine-tuning is below --min-exact {min_exact:.0%}", file=sys.stderr)
        return 1
    return 0


def prefer(before: Path, after: Path, pairs: Path, min_accuracy: float | None) -> int:
    from megatron_sft.tiny.preference import preference_accuracy

    (won_before, n), (won_after, _) = (preference_accuracy(model, pairs) for model in (before, after))
    print(f"preference accuracy on {n} held-out pairs (chosen answer more likely than rejected): "
          f"before {won_before}/{n} ({won_before / n:.0%}), after {won_after}/{n} ({won_after / n:.0%})")
    if min_accuracy is not None and won_after / n < min_accuracy:
        print(f"error: {won_after / n:.0%} preference accuracy after DPO is below --min-accuracy {min_accuracy:.0%}",
              file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write the tiny model, tokenizer and data")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--train-samples", type=int, default=4000)
    b.add_argument("--heldout", type=int, default=50)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--kind", choices=["qwen3", "hybrid"], default="qwen3",
                   help="qwen3 (MODEL=tiny) or a Nemotron-H hybrid (MODEL=tiny_hybrid)")
    r = sub.add_parser("report", help="compare generate.py outputs before and after fine-tuning")
    r.add_argument("--before", type=Path, required=True)
    r.add_argument("--after", type=Path, required=True)
    r.add_argument("--min-exact", type=float, default=None, help="exit 1 when the exact-match rate after is below")
    p = sub.add_parser("prefs", help="write the preference task's pairs (for DPO after the demo)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("prefer", help="preference accuracy of two Hugging Face models on held-out pairs")
    s.add_argument("--before", type=Path, required=True)
    s.add_argument("--after", type=Path, required=True)
    s.add_argument("--pairs", type=Path, required=True)
    s.add_argument("--min-accuracy", type=float, default=None, help="exit 1 when the accuracy after is below")
    cli = parser.parse_args()
    if cli.command == "build":
        build(cli.out, cli.train_samples, cli.heldout, cli.seed, cli.kind)
        return 0
    if cli.command == "prefs":
        from megatron_sft.tiny.preference import build_preference_task

        paths = build_preference_task(cli.out, seed=cli.seed)
        print(f"preference task in {cli.out}: {paths['train'].name}, {paths['heldout'].name}")
        return 0
    if cli.command == "prefer":
        return prefer(cli.before, cli.after, cli.pairs, cli.min_accuracy)
    return report(cli.before, cli.after, cli.min_exact)


if __name__ == "__main__":
    sys.exit(main())
