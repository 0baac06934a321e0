"""`python -m megatron_sft.run_finetune <flags>`: the finetune entry point inside the package.

examples/finetune.py and `megatron_sft.sft()` both run this. Heavy imports stay inside main():
dist_checkpointing's saver process re-imports the launching module.
"""

from __future__ import annotations


def main() -> int:
    from megatron_sft.arguments import parse_args
    from megatron_sft.runtime.log import setup_logging

    setup_logging()
    args = parse_args()  # all flag errors reported together, before any heavy work
    from megatron_sft.runtime.distributed import shutdown
    from megatron_sft.training.loop import finetune
    from megatron_sft.cli import EXIT_INTERRUPTED

    trainer = finetune(args)
    shutdown()
    return EXIT_INTERRUPTED if trainer.exit.interrupted else 0


if __name__ == "__main__":
    from megatron_sft.cli import run_main

    run_main(main)
