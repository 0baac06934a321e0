"""examples/finetune.py, except that the save of one checkpoint holds before its tracker is written, so a test can
kill the run mid-save:  paused_save.py iter_0000010 300 <finetune flags>"""

from __future__ import annotations

import sys
import time


def main() -> None:
    from megatron_sft.checkpointing import layout
    from megatron_sft.cli import run_main
    from megatron_sft.run_finetune import main as finetune_main

    name, seconds = sys.argv[1], float(sys.argv[2])
    write_tracker = layout.write_tracker

    def paused(root, iteration):  # the data of the checkpoint is on disk; only the tracker is missing
        if layout.iteration_dir(root, iteration).name == name:
            print(f"save of {name} paused", flush=True)
            time.sleep(seconds)
        write_tracker(root, iteration)

    layout.write_tracker = paused
    sys.argv = [sys.argv[0], *sys.argv[3:]]
    run_main(finetune_main)


if __name__ == "__main__":  # dist_checkpointing's spawned saver re-imports this file
    main()
