"""`python -m megatron_sft.run_finetune <flags>` (= `python -m megatron_sft finetune`): the finetune entry point.

examples/finetune.py and `megatron_sft.sft()` both run this. Heavy imports stay inside the functions:
dist_checkpointing's saver process re-imports the launching module.
"""

from __future__ import annotations


def run(cfg) -> int:
    """The finetune app's run (apps.py): train as `cfg` says; 130 when stopped by Ctrl-C or SIGTERM (saved)."""
    from megatron_sft.cli import EXIT_INTERRUPTED
    from megatron_sft.training.loop import finetune

    trainer = finetune(*_objective(cfg))
    return EXIT_INTERRUPTED if trainer.exit.interrupted else 0


def _objective(cfg):
    """(config, Trainer class): with a teacher, now or recorded by the run being resumed, distillation."""
    from megatron_sft.training.kd import trainer_class, with_teacher

    cfg = with_teacher(cfg)
    return (cfg, trainer_class()) if cfg.is_kd else (cfg, None)


def main() -> int:
    from megatron_sft.apps import main as run_app

    return run_app("finetune")


if __name__ == "__main__":
    from megatron_sft.cli import run_main

    run_main(main)
