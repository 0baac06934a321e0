"""`python -m megatron_sft.launch.torchrun ARGS`: torchrun, minus its failure report when the workers stopped on a
user error.

A worker that meets a UserError prints one `error:` line (rank 0) and exits 2 (cli.run_main). torchrun would then
log each worker's exit and raise a ChildFailedError whose report of a dozen lines buries that line. Here the run
ends with exit code 2 and nothing more; any other failure gets torchrun's full report, as before. A signal
(SIGTERM from a scheduler) is forwarded to the workers exactly as torchrun does; the run then ends with one line
and exit code 128 + the signal, instead of torchrun's traceback."""

from __future__ import annotations

import logging
import sys

from megatron_sft.cli import EXIT_USER_ERROR


def main() -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    elastic = logging.getLogger("torch.distributed.elastic")
    level = elastic.level
    elastic.setLevel(logging.CRITICAL)  # its per-worker "failed (exitcode: 2)" lines; the report below says it all
    try:
        torchrun_main()
    except ChildFailedError as err:
        _, first = err.get_first_failure()
        if first.exitcode == EXIT_USER_ERROR:
            return EXIT_USER_ERROR
        elastic.setLevel(level)
        raise
    except SignalException as err:  # SIGTERM / SIGINT: forwarded to the workers, which saved and stopped
        print(f"torchrun: stopped by signal {err.sigval}", file=sys.stderr, flush=True)
        return 128 + int(err.sigval)
    return 0


if __name__ == "__main__":
    from megatron_sft.cli import exit_now

    exit_now(main())
