"""The wrapper every entry script runs its main() in: user mistakes end as one clean message."""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

from megatron_sft.errors import UserError

EXIT_USER_ERROR = 2  # argparse's code for a bad command line


def run_main(main_fn: Callable[[], object]) -> NoReturn:
    """Run `main_fn` and end the process: exit 0, or on a UserError `error: <line>` per line on rank 0 only and
    exit 2 on every rank.

    No traceback: the message already names the flag, file or value and the fix. Every rank exits,
    so torchrun does not wait on ranks that would hang in the next collective. Any other exception
    is a bug and propagates with its traceback (and the ordinary interpreter exit).
    """
    try:
        main_fn()
    except UserError as err:
        if os.environ.get("RANK", "0") == "0":
            lines = str(err).splitlines() or [type(err).__name__]
            print("\n".join(f"error: {line}" for line in lines), file=sys.stderr, flush=True)
        exit_now(EXIT_USER_ERROR)
    exit_now(0)


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
