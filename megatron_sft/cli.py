"""The wrapper every entry script runs its main() in: user mistakes end as one clean message."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TypeVar

from megatron_sft.errors import UserError

T = TypeVar("T")

EXIT_USER_ERROR = 2  # argparse's code for a bad command line


def run_main(main_fn: Callable[[], T]) -> T:
    """Run `main_fn`; a UserError prints `error: <line>` per line on rank 0 only and exits 2 on every rank.

    No traceback: the message already names the flag, file or value and the fix. Every rank exits,
    so torchrun does not wait on ranks that would hang in the next collective. Any other exception
    is a bug and propagates with its traceback.
    """
    try:
        return main_fn()
    except UserError as err:
        if os.environ.get("RANK", "0") == "0":
            lines = str(err).splitlines() or [type(err).__name__]
            print("\n".join(f"error: {line}" for line in lines), file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
