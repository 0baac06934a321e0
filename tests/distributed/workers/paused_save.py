"""examples/finetune.py, except that the save of one iteration stops at a chosen point, so a test can kill -9 the
run there:

    paused_save.py PHASE ITERATION_DIR_NAME SECONDS <finetune flags>

PHASE is how far that save got: `shards` (the dist-checkpoint files are written, nothing else), `hf_assets` (and
the tokenizer and config files), `manifest` (the manifest too; not yet renamed into place), `tracker` (renamed into
place; the tracker still names the previous iteration). Rank 0 pauses; the other ranks wait for it in a barrier.
"""

from __future__ import annotations

import sys
import time


def main() -> None:
    from megatron_sft.checkpointing import integrity, layout
    from megatron_sft.cli import run_main
    from megatron_sft.run_finetune import main as finetune_main

    phase, name, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])

    def pause(path) -> None:
        if name in str(path):
            print(f"save of {name} paused at {phase}", flush=True)
            time.sleep(seconds)

    def wrap(module, attr: str, before: bool) -> None:
        original = getattr(module, attr)

        def hooked(*args, **kwargs):
            if before:
                pause(args[1] if attr == "copy_hf_assets" else layout.iteration_dir(*args))
            result = original(*args, **kwargs)
            if not before:
                pause(args[0] if attr == "write_manifest" else args[1])
            return result

        setattr(module, attr, hooked)

    if phase == "shards":
        wrap(layout, "copy_hf_assets", before=True)
    elif phase == "hf_assets":
        wrap(layout, "copy_hf_assets", before=False)
    elif phase == "manifest":
        wrap(integrity, "write_manifest", before=False)
    elif phase == "tracker":
        wrap(layout, "write_tracker", before=True)
    else:
        raise SystemExit(f"unknown phase {phase}")
    sys.argv = [sys.argv[0], *sys.argv[4:]]
    run_main(finetune_main)


if __name__ == "__main__":  # dist_checkpointing's spawned saver re-imports this file
    main()
