"""examples/finetune.py without the free-space check before each save, as when another process fills the disk
between the check and the write: the save itself then meets ENOSPC.   no_space_check.py <finetune flags>"""

from __future__ import annotations


def main() -> None:
    from megatron_sft.checkpointing import space
    from megatron_sft.cli import run_main
    from megatron_sft.run_finetune import main as finetune_main

    space.shortfall = lambda *args, **kwargs: None
    run_main(finetune_main)


if __name__ == "__main__":  # dist_checkpointing's spawned saver re-imports this file
    main()
