"""The applications, one table: each is a row of flag groups, the checks it makes before any model exists, and the
function that runs it. One main() starts them all.

    python -m megatron_sft APP [FLAGS ...]      APP: finetune, dpo, generate, mmlu, quantize, convert, export
    examples/APP.py, tools/convert.py           the same, as scripts (thin shims over main)
    examples/APP.sh                             the launcher checks the command with the same row before it launches

main(APP): logging; parse (flags, resolved against the checkpoint, validated); the row's checks; the row's run(cfg),
which calls startup.start (device, process groups, value sources and notices) when its own inputs are read;
shutdown. Adding an app is a row here and its run function (and, for a shell script, a plan in launch/scripts.py).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from megatron_sft.arguments import ArgsAdder, parse_args
from megatron_sft.arguments.dpo import add_dpo_args, check_dpo_args
from megatron_sft.arguments.inference import (
    add_generation_extra_args,
    add_inference_args,
    check_generation_args,
    check_mmlu_args,
)
from megatron_sft.arguments.inputs import check_not_converting_in_place
from megatron_sft.arguments.kd import add_kd_args, check_kd_args
from megatron_sft.arguments.quantize import add_quantize_args, check_quantize_args
from megatron_sft.arguments.training import check_neftune, check_run_length
from megatron_sft.config import RunConfig


@dataclass(frozen=True)
class App:
    name: str
    summary: str
    run: str  # "module:function" taking the checked RunConfig; imported after parsing, so a bad flag costs nothing
    flag_groups: tuple[ArgsAdder, ...] = ()  # beyond the common ones (model, parallel, training, data, ...)
    checks: tuple[Callable[[RunConfig], None], ...] = ()  # raise UserError; need no model, no process group


APPS = {app.name: app for app in (
    App("finetune", "supervised fine-tuning (full or LoRA) on packed chat data, or distillation from a teacher",
        "megatron_sft.run_finetune:run", (add_kd_args,), (check_run_length, check_neftune, check_kd_args)),
    App("dpo", "preference training (DPO, IPO, hinge) on chosen/rejected pairs, after fine-tuning",
        "megatron_sft.training.dpo:run", (add_dpo_args,), (check_run_length, check_dpo_args)),
    App("generate", "generate from a checkpoint or a Hugging Face directory", "megatron_sft.inference.run:generate_main",
        (add_inference_args, add_generation_extra_args), (check_generation_args,)),
    App("mmlu", "MMLU accuracy of a checkpoint or a Hugging Face directory", "megatron_sft.inference.run:mmlu_main",
        (add_inference_args,), (check_mmlu_args,)),
    App("quantize", "post-training quantization with nvidia-modelopt (calibrate, save fake-quantized)",
        "megatron_sft.quantization.ptq:run", (add_quantize_args,), (check_quantize_args, check_not_converting_in_place)),
    App("convert", "Hugging Face -> Megatron, or Megatron -> Hugging Face (the direction follows --load)",
        "megatron_sft.conversion:run", checks=(check_not_converting_in_place,)),
    App("export", "a (quantized) Megatron checkpoint -> Hugging Face for serving (convert's export direction)",
        "megatron_sft.conversion:run", checks=(check_not_converting_in_place,)),
)}


def parse(name: str, argv: Sequence[str] | None = None, world_size: int | None = None,
          prog: str | None = None) -> RunConfig:
    """The app's config from its flags, every check that needs no model made (the launcher calls this too)."""
    app = APPS[name]
    cfg = parse_args(None if argv is None else list(argv), world_size=world_size, extra=app.flag_groups, prog=prog)
    for check in app.checks:
        check(cfg)
    return cfg


def _function(ref: str) -> Callable[[RunConfig], object]:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def main(name: str, argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run app `name` on `argv` (default sys.argv[1:]); returns the exit code (run_main ends the process with it)."""
    from megatron_sft.runtime.log import setup_logging

    setup_logging()
    cfg = parse(name, argv, prog=prog)
    result = _function(APPS[name].run)(cfg)
    from megatron_sft.runtime.distributed import shutdown

    shutdown()
    return result if isinstance(result, int) else 0
