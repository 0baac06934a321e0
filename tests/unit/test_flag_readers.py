"""Every flag the parsers accept is read by the code that acts on it: a flag nothing reads would be accepted
and silently ignored. Reads inside the parser and the config definitions (megatron_sft/config.py)
do not count; validate.py, derive.py, resolve.py and the other checks do: they act on the
value, with a problem, a notice or a derived value."""

from __future__ import annotations

import re
from pathlib import Path

from megatron_sft.arguments import add_inference_args, build_parser
from megatron_sft.arguments.inference import add_generation_extra_args

REPO = Path(__file__).resolve().parents[2]
CONFIG_DEFINITIONS = {REPO / "megatron_sft" / "config.py"}
# Where flags are only declared: reading a dest there does not act on it.
DECLARATIONS = {"__init__.py", "checkpoint.py", "data.py", "inference.py", "model.py", "parallel.py", "runtime.py",
                "training.py"}


def parsed_flags(extra_adders=()) -> dict[str, str]:
    """dest -> option string of every flag of the entry points' parsers."""
    parser = build_parser([add_inference_args, add_generation_extra_args, *extra_adders])
    return {a.dest: a.option_strings[-1] for a in parser._actions if a.option_strings and a.dest != "help"
            and not (a.choices is not None and len(a.choices) == 1)}  # one allowed value: argparse enforces it


def readers(dest: str) -> list[Path]:
    pattern = re.compile(rf"(\.{dest}\b|[\"']{dest}[\"'])")
    files = [*(REPO / "megatron_sft").rglob("*.py"), *(REPO / "tools").glob("*.py"), *(REPO / "examples").glob("*.py")]
    return [f for f in files if not (f.parent.name == "arguments" and f.name in DECLARATIONS)
            and f not in CONFIG_DEFINITIONS and pattern.search(f.read_text())]


def unread(flags: dict[str, str]) -> list[str]:
    return sorted(flag for dest, flag in flags.items() if not readers(dest))


def test_every_flag_has_a_reader():
    assert unread(parsed_flags()) == []


def test_a_flag_without_a_reader_is_caught():
    def add_unused(parser):
        parser.add_argument("--flag-nothing-reads", type=int, default=0)

    assert unread(parsed_flags([add_unused])) == ["--flag-nothing-reads"]
