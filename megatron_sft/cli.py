"""The wrapper every entry script runs its main() in: user mistakes end as one clean message."""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import NoReturn

from megatron_sft.errors import UserError

EXIT_USER_ERROR = 2  # argparse's code for a bad command line
EXIT_INTERRUPTED = 130  # a shell's code for a command stopped by Ctrl-C (128 + SIGINT)
# Set by the torchrun wrapper (megatron_sft.launch.torchrun) to a folder of its own: each rank writes its error
# there and the wrapper prints the lowest rank's lines once, after every worker has stopped. Printing from the worker
# is not enough: torchrun kills the other workers as soon as one exits, often before rank 0 has printed.
ERRORS_DIR_ENV = "MEGATRON_SFT_ERRORS_DIR"


def run_main(main_fn: Callable[[], object]) -> NoReturn:
    """Run `main_fn` and end the process: exit with its return value when it is an int (else 0), or on a UserError
    `error: <line>` per line once (report_user_error) and exit 2 on every rank; Ctrl-C: one line, exit 130.

    No traceback: the message already names the flag, file or value and the fix. Every rank exits,
    so torchrun does not wait on ranks that would hang in the next collective. Any other exception
    is a bug and propagates with its traceback (and the ordinary interpreter exit).
    """
    try:
        code = main_fn()
    except UserError as err:
        report_user_error(err)
        exit_now(EXIT_USER_ERROR)
    except KeyboardInterrupt:  # Ctrl-C before training installed its handler (training saves, then exits 130)
        if os.environ.get("RANK", "0") == "0":
            print("\ninterrupted", file=sys.stderr, flush=True)
        exit_now(EXIT_INTERRUPTED)
    exit_now(code if isinstance(code, int) else 0)


def report_user_error(err: UserError) -> None:
    """Under the torchrun wrapper: into its errors folder (it prints them). Else: printed by rank 0; another rank
    waits a moment before exiting, so torchrun does not stop rank 0 before its line is out."""
    text = "\n".join(f"error: {line}" for line in (str(err).splitlines() or [type(err).__name__]))
    rank = os.environ.get("RANK", "0")
    folder = os.environ.get(ERRORS_DIR_ENV)
    if folder and os.path.isdir(folder):
        tmp = os.path.join(folder, f".rank{rank}.tmp")
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, os.path.join(folder, f"rank{int(rank):06d}"))  # whole or absent, never half
        return
    if rank == "0":
        print(text, file=sys.stderr, flush=True)
    else:
        time.sleep(3)


def exit_now(code: int) -> NoReturn:
    """Exit with everything an ordinary exit does that matters (non-daemon threads joined; the atexit handlers:
    logging flushed and closed, multiprocessing's managers and children stopped, weakref finalizers; stdout and
    stderr flushed) but without the interpreter's teardown of every module and object, which costs 1.5 s with
    megatron-core imported and 2.4 s with modelopt (measured on a 2-core CPU) on every rank of every launch."""
    for thread in threading.enumerate():  # as the interpreter would: its non-daemon threads finish first
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
