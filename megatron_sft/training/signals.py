"""When to stop: --train-iters/--train-samples, --exit-interval, --exit-duration-in-mins, SIGTERM."""

from __future__ import annotations

import signal
import time

import torch

from megatron_sft.arguments.run_config import RunConfig


class ExitController:
    """SIGTERM (a scheduler's preemption notice) asks for a clean save-and-exit at the next step end."""

    def __init__(self, cfg: RunConfig):
        self.exit_interval = cfg.training.exit_interval
        minutes = cfg.training.exit_duration_in_mins
        self.deadline = time.time() + 60 * minutes if minutes else None
        self.sigterm = False
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        self.sigterm = True

    def reason_to_exit(self, iteration: int) -> str | None:
        """Agreed on by all ranks (any rank's signal or clock counts), so every rank stops together."""
        flags = torch.tensor([self.sigterm, bool(self.deadline and time.time() > self.deadline)], dtype=torch.int32)
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        if flags[0]:
            return "SIGTERM received"
        if flags[1]:
            return "--exit-duration-in-mins reached"
        if self.exit_interval and iteration % self.exit_interval == 0:
            return f"--exit-interval {self.exit_interval} reached"
        return None
