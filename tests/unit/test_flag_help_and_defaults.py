"""Every flag of every entry point says what it does, and every default is written once: in its RunConfig field."""

from __future__ import annotations

import argparse
import importlib.util
import sys

import pytest

from megatron_sft.arguments import build_parser
from megatron_sft.arguments.inference import add_generation_extra_args, add_inference_args
from megatron_sft.arguments.peft import LORA_RECORDED
from megatron_sft.arguments.resolve import ARCHITECTURE_KEYS, MEGATRON_DEFAULTS
from megatron_sft.config import SECTION_OF, SECTIONS, field_default
from megatron_sft.config import DataConfig
from tests.conftest import REPO

ENTRY_POINTS = ["megatron_sft/run_finetune.py", "examples/generate.py", "examples/mmlu.py", "tools/convert.py",
                "tools/prepare_data.py", "tools/inspect_data.py"]


# examples/finetune.py hands over to megatron_sft/run_finetune.py's main() (it has none of its own).


class _Captured(Exception):
    def __init__(self, parser):
        self.parser = parser


def parser_of(script: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser `script` builds, caught as its main() parses (nothing runs after that)."""
    def capture(self, args=None, namespace=None):
        raise _Captured(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr(sys, "argv", [script])
    spec = importlib.util.spec_from_file_location("entry", REPO / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(_Captured) as caught:
        module.main()
    return caught.value.parser


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_every_flag_has_help(script, monkeypatch):
    parser = parser_of(script, monkeypatch)
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(flags) > 5
    assert [a.option_strings[-1] for a in flags if not (a.help or "").strip()] == []


def test_help_prints_grouped_with_defaults():
    text = build_parser([add_inference_args, add_generation_extra_args]).format_help()
    for group in ("model architecture", "training", "optimizer (Adam)", "checkpointing", "generation"):
        assert f"\n{group}" in text, group
    assert "--lr-decay-style" in text and "(default: linear)" in text


def test_each_flag_defaults_to_its_field():
    """A flag's default is its field's, or None where a reader fills the field's default in: the architecture and
    LoRA's sizes (flag > checkpoint > default) and DataConfig."""
    parser = build_parser([add_inference_args, add_generation_extra_args])
    wrong = []
    for action in parser._actions:
        name = action.dest
        if name not in SECTION_OF:
            continue
        resolved = name in ARCHITECTURE_KEYS or name in LORA_RECORDED or SECTIONS[SECTION_OF[name]] is DataConfig
        if action.default != field_default(name) and not (resolved and action.default is None):
            wrong.append((action.option_strings[-1], action.default, field_default(name)))
    assert wrong == []


def test_megatron_defaults_are_the_fields():
    assert MEGATRON_DEFAULTS == {key: field_default(key) for key in ARCHITECTURE_KEYS}


def test_a_changed_field_default_reaches_the_flag(monkeypatch):
    """Computed, not copied: change the field and the parser follows."""
    from megatron_sft import config as run_config

    section = SECTIONS[SECTION_OF["lr_decay_style"]]
    patched = dict(section.__dataclass_fields__)
    field = patched["lr_decay_style"]
    monkeypatch.setattr(field, "default", "cosine")
    assert run_config.field_default("lr_decay_style") == "cosine"
    assert build_parser().parse_args([]).lr_decay_style == "cosine"
