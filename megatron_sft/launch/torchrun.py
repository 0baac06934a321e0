"""`python -m megatron_sft.launch.torchrun ARGS`: torchrun, with a user error reported in its one line.

A worker that meets a UserError exits 2 (cli.run_main) after writing its `error:` line into a folder this wrapper
made (cli.ERRORS_DIR_ENV). torchrun stops the other workers as soon as one exits, often before rank 0 could
print, and would then log each worker's exit and raise a ChildFailedError whose report of a dozen lines buries the
message. Here, once every worker has stopped, the lowest such rank's lines are printed once and the run ends
with exit code 2; any other failure gets torchrun's full report, as before. A signal (Ctrl-C, SIGTERM
from a scheduler) is forwarded to the workers exactly as torchrun does; they save and stop, say so in one line,
and the run ends with exit code 128 + the signal, without torchrun's traceback."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile

from megatron_sft.cli import ERRORS_DIR_ENV, EXIT_USER_ERROR


def worker_errors(folder: str) -> list[str]:
    """The lines of the lowest rank that wrote any: rank 0's when it got that far (its words are the run's, e.g. the
    disk that filled up, where another rank only knows that the save failed), else the first rank that did."""
    for name in sorted(os.listdir(folder)):
        if name.startswith("rank"):
            with open(os.path.join(folder, name)) as f:
                return [line for line in f.read().splitlines() if line]
    return []


def main() -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    elastic = logging.getLogger("torch.distributed.elastic")
    level = elastic.level
    elastic.setLevel(logging.CRITICAL)  # its per-worker "failed (exitcode: 2)" lines; the report below says it all
    folder = tempfile.mkdtemp(prefix="megatron_sft_errors.")
    os.environ[ERRORS_DIR_ENV] = folder  # inherited by the workers
    try:
        torchrun_main()
    except ChildFailedError as err:
        _, first = err.get_first_failure()
        lines = worker_errors(folder)
        if lines:
            print("\n".join(lines), file=sys.stderr, flush=True)
        if first.exitcode == EXIT_USER_ERROR and lines:
            return EXIT_USER_ERROR
        elastic.setLevel(level)
        raise
    except SignalException as err:  # Ctrl-C / SIGTERM: forwarded to the workers, which saved and stopped
        return 128 + int(err.sigval)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    from megatron_sft.cli import exit_now

    exit_now(main())
