"""Command-line arguments with Megatron-LM's flag names, dest names and meanings.

    from megatron_sft.arguments import build_parser, parse_args
    cfg = parse_args()             # RunConfig: parse, resolve the architecture, derive, validate, freeze

Parsing is cheap on purpose (no torch, megatron, modelopt or transformers import): every rank runs
it first, and a bad command line should fail in a fraction of a second with every problem listed.
Each subsystem adds its flags in its own module (model, parallel, training, data, checkpoint,
runtime, inference).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable

from megatron_sft.arguments.checkpoint import add_checkpoint_args
from megatron_sft.arguments.data import add_data_args
from megatron_sft.arguments.inference import add_inference_args
from megatron_sft.arguments.model import add_model_args
from megatron_sft.arguments.parallel import add_parallel_args
from megatron_sft.arguments.derive import derive_values
from megatron_sft.arguments.peft import LORA_RECORDED, add_peft_args, resolve_peft
from megatron_sft.arguments.resolve import MEGATRON_DEFAULTS, resolve_architecture
from megatron_sft.config import SECTION_OF, SECTIONS, RunConfig, field_default
from megatron_sft.arguments.runtime import add_runtime_args
from megatron_sft.arguments.training import add_training_args
from megatron_sft.arguments.validate import check_sizes, validate_args
from megatron_sft.config import DataConfig
from megatron_sft.errors import ConfigErrors, UserError

__all__ = ["ArgsAdder", "build_parser", "parse_args", "add_inference_args", "option_names", "RunConfig"]

ArgsAdder = Callable[[argparse.ArgumentParser], None]
DEFAULT_GROUPS: tuple[ArgsAdder, ...] = (
    add_model_args,
    add_parallel_args,
    add_training_args,
    add_peft_args,
    add_data_args,
    add_checkpoint_args,
    add_runtime_args,
)


class _HelpFormatter(argparse.HelpFormatter):
    """Shows a flag's default where it has one worth showing and its help does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default is not None and action.default is not False and action.default != []
        if shown and action.default is not argparse.SUPPRESS and "default" not in text:
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """Reports bad flags as ConfigErrors, so entry points print them once (rank 0) and exit 2."""

    def error(self, message: str):
        raise ConfigErrors([f"{message} (see --help)"])


def build_parser(extra: Iterable[ArgsAdder] = (), prog: str | None = None) -> argparse.ArgumentParser:
    """The parser of every entry script; `extra` adds groups such as add_inference_args."""
    # allow_abbrev=False like Megatron-LM: a prefix of one flag must not silently mean another.
    parser = _Parser(prog=prog, description="Supervised fine-tuning on Megatron-Core", allow_abbrev=False,
                     formatter_class=_HelpFormatter)
    for add in (*DEFAULT_GROUPS, *extra):
        add(parser)
    apply_field_defaults(parser)
    return parser


def apply_field_defaults(parser: argparse.ArgumentParser) -> None:
    """Each flag's default is its RunConfig field's, written once in config.py. Flags that stay None mean
    "not given": the architecture (resolved: flag > checkpoint > field default) and the data flags (DataConfig
    reads None as its field default) and LoRA's sizes (flag > the LoRA checkpoint > field default)."""
    for action in parser._actions:
        name = action.dest
        if name not in SECTION_OF or name in MEGATRON_DEFAULTS or name in LORA_RECORDED:
            continue
        if SECTIONS[SECTION_OF[name]] is not DataConfig:
            action.default = field_default(name)


def option_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """dest -> the flag a user types (the long option), for messages."""
    names: dict[str, str] = {}
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs:
            names.setdefault(action.dest, longs[0])
    return names


def parse_args(
    argv: list[str] | None = None, *, world_size: int | None = None, extra: Iterable[ArgsAdder] = (),
    prog: str | None = None,
) -> RunConfig:
    """Parse; resolve the architecture and LoRA (flag > checkpoint > default); derive (derive.py, the only place
    values are computed); validate (reads only); freeze.

    Raises ConfigErrors listing every problem. `world_size` defaults to $WORLD_SIZE (else 1).
    """
    parser = build_parser(extra, prog)
    args = parser.parse_args(argv)
    args.world_size = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    args.notices = []
    options = option_names(parser)
    try:
        problems = resolve_architecture(args, options)
    except ConfigErrors:
        raise
    except UserError as err:  # the checkpoint cannot be read: checks on guessed values would only add noise
        raise ConfigErrors([str(err)]) from None
    resolve_peft(args, problems)
    sizes = check_sizes(args, options)
    if sizes:  # every derived value divides by these
        raise ConfigErrors(problems + sizes)
    derive_values(args, options)
    problems += validate_args(args, options)
    if problems:
        raise ConfigErrors(problems)
    return RunConfig.from_namespace(args)
