"""Counts of everything read, kept, skipped, dropped or cut, so that nothing is lost silently."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# What each count means, printed next to it in the log and in metadata.json.
EXPLAIN = {
    "no_assistant_turn": "conversations without an assistant turn (nothing to train on)",
    "no_supervised_turn": "conversations whose turns are all marked train=false",
    "truncated": "samples longer than --max-sample-length (default --seq-length), cut to it (--drop-long-samples "
    "drops them instead)",
    "too_long": "samples longer than --max-sample-length (default --seq-length), dropped (--drop-long-samples)",
    "no_supervised_tokens": "samples left with no supervised token after truncation to --max-sample-length",
    "empty_file": "empty data files (--skip-invalid)",
    "truncated_pair": "preference pairs over --seq-length, the longer response cut first (never the prompt)",
    "prompt_too_long": "preference pairs whose prompt leaves no room in --seq-length for both responses, dropped",
    "same_responses": "preference records whose chosen and rejected responses are the same",
    "reasoning": "conversations where the chat template left out reasoning (e.g. Qwen3 drops the reasoning "
    "of assistant turns before the last user query)",
    "content": "conversations where the chat template left out message content",
    "tool_calls": "conversations where the chat template left out tool calls",
}


@dataclass
class DataStats:
    records_read: int = 0
    samples_kept: int = 0
    truncated: int = 0
    tokens: int = 0
    supervised_tokens: int = 0  # tokens that are a label with loss (the first token of a sample never is)
    invalid: Counter = field(default_factory=Counter)  # skipped with --skip-invalid, by reason
    dropped: Counter = field(default_factory=Counter)  # valid but without training signal, by reason
    template_dropped: Counter = field(default_factory=Counter)  # conversations, by kind of content
    examples: dict = field(default_factory=dict)  # reason -> first location seen
    lengths: Counter = field(default_factory=Counter)  # power-of-two bucket -> samples

    def count(self, table: str, reason: str, where: str) -> None:
        getattr(self, table)[reason] += 1
        self.examples.setdefault(reason, where)

    def add_sample(self, length: int, supervised: int) -> None:
        self.samples_kept += 1
        self.tokens += length
        self.supervised_tokens += supervised
        self.lengths[_bucket(length)] += 1

    def merge(self, other: DataStats) -> list[str]:
        """Add `other` in; returns the reasons seen for the first time (to log each once)."""
        new = [r for r in other.examples if r not in self.examples]
        for name in ("records_read", "samples_kept", "truncated", "tokens", "supervised_tokens"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("invalid", "dropped", "template_dropped", "lengths"):
            getattr(self, name).update(getattr(other, name))
        for reason, where in other.examples.items():
            self.examples.setdefault(reason, where)
        return new

    def log_first(self, reason: str) -> None:
        what = EXPLAIN.get(reason, f"records skipped as invalid ({reason})")
        log.warning("data: %s; first at %s (counted in the statistics, logged once)", what, self.examples[reason])

    def to_dict(self) -> dict:
        return {
            "records_read": self.records_read,
            "samples_kept": self.samples_kept,
            "invalid_skipped": dict(self.invalid),
            "dropped": dict(self.dropped),
            "truncated": self.truncated,
            "template_dropped_content": dict(self.template_dropped),
            "first_location": dict(self.examples),
            "explain": {k: v for k, v in EXPLAIN.items() if k in self.examples},
            "tokens": self.tokens,
            "supervised_tokens": self.supervised_tokens,
            "length_histogram": {f"<={k}": v for k, v in sorted(self.lengths.items())},
        }


def _bucket(length: int) -> int:
    return 1 << max(0, int(length - 1).bit_length())


def summary_lines(meta: dict) -> list[str]:
    """Human-readable statistics from metadata.json (used by the log and tools/inspect_data.py)."""
    s = meta["stats"]
    lines = [
        f"records read {s['records_read']}, samples kept {s['samples_kept']}, truncated {s['truncated']}",
        f"skipped as invalid {s['invalid_skipped'] or 0}, dropped {s['dropped'] or 0}",
        f"template left out content in {s['template_dropped_content'] or 0}",
        (
            f"tokens {s['tokens']}, supervised tokens {s['supervised_tokens']} "
            f"({s['supervised_tokens'] / max(1, s['tokens']):.1%})"
            + (", some weighted by their message's \"weight\" (the loss is the weighted mean)"
               if meta.get("weighted") else "")
        ),
    ]
    for source in meta["sources"]:
        if source.get("subset"):  # PATH:N
            lines.append(
                f"{source['spec']}: {source['records_selected']} of its {source['records_read']} records "
                f"(subset :{source['subset']}, seed {meta['config']['seed']})"
            )
    units = "pairs" if meta["config"].get("preference") else "conversations"
    for name, split in meta["splits"].items():
        lines.append(
            f"{name}: {split['conversations']} {units} -> {split['packs']} packed sequences of "
            f"{meta['config']['seq_length']} tokens, fill {split['fill']:.2%}"
        )
    hist = ", ".join(f"{k}: {v}" for k, v in s["length_histogram"].items())
    lines.append(f"sample length histogram (tokens): {hist}")
    return lines
