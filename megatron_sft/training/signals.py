"""When to stop: --train-iters/--train-samples, --exit-interval, --exit-duration-in-mins, SIGTERM, Ctrl-C."""

from __future__ import annotations

import os
import signal
import time

import torch

from megatron_sft.config import RunConfig
from megatron_sft.cli import EXIT_INTERRUPTED



class ExitController:
    """SIGTERM (a scheduler's preemption notice) and Ctrl-C (SIGINT) ask for a clean save-and-exit at the next step
    end. A second Ctrl-C quits at once: the last checkpoint stays intact (saves are atomic)."""

    def __init__(self, cfg: RunConfig):
        self.exit_interval = cfg.training.exit_interval
        minutes = cfg.training.exit_duration_in_mins
        self.deadline = time.time() + 60 * minutes if minutes else None
        self.sigterm = False
        self.interrupted = False
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigterm(self, signum, frame) -> None:
        self.sigterm = True

    def _on_sigint(self, signum, frame) -> None:
        rank0 = os.environ.get("RANK", "0") == "0"
        if self.interrupted:
            if rank0:
                os.write(2, b"\ninterrupted again: quitting without saving; the last checkpoint saved stays intact\n")
            os._exit(EXIT_INTERRUPTED)
        self.interrupted = True
        if rank0:
            os.write(2, b"\ninterrupted: saving at the end of this iteration (Ctrl-C again quits at once)\n")

    def reason_to_exit(self, iteration: int) -> str | None:
        """Agreed on by all ranks (any rank's signal or clock counts), so every rank stops together."""
        flags = torch.tensor([self.sigterm, bool(self.deadline and time.time() > self.deadline), self.interrupted],
                             dtype=torch.int32)
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        self.interrupted = bool(flags[2])  # every rank exits 130 alike
        if flags[2]:
            return "interrupted (Ctrl-C)"
        if flags[0]:
            return "SIGTERM received"
        if flags[1]:
            return "--exit-duration-in-mins reached"
        if self.exit_interval and iteration % self.exit_interval == 0:
            return f"--exit-interval {self.exit_interval} reached"
        return None
