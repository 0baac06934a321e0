"""examples/finetune.py, except that the run holds for SECONDS after iteration ITERATION (printing that it does),
so a test can send SIGTERM at a known point:   slow_step.py ITERATION SECONDS <finetune flags>"""

from __future__ import annotations

import sys
import time


def main() -> None:
    from megatron_sft.cli import run_main
    from megatron_sft.run_finetune import main as finetune_main
    from megatron_sft.training.loop import Trainer

    iteration, seconds = int(sys.argv[1]), float(sys.argv[2])
    step = Trainer.step

    def held(self):
        figures = step(self)
        if self.state.iteration == iteration:
            print(f"holding after iteration {iteration}", flush=True)
            time.sleep(seconds)
        return figures

    Trainer.step = held
    sys.argv = [sys.argv[0], *sys.argv[3:]]
    run_main(finetune_main)


if __name__ == "__main__":  # dist_checkpointing's spawned saver re-imports this file
    main()
