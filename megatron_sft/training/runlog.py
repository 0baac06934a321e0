"""What a run leaves next to its checkpoints: training.log (the console's log lines) and metrics.jsonl
(one JSON object per logged iteration and per validation), written by rank 0, appended on resume."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

from megatron_sft.checkpointing.names import METRICS, TRAINING_LOG


class RunFiles:
    """Opened at the start of a run that has --save; a no-op elsewhere (other ranks, no --save)."""

    def __init__(self, save_dir: str | None):
        self.handler: logging.Handler | None = None
        self.metrics = None
        if not save_dir or int(os.environ.get("RANK", "0")) != 0:
            return
        folder = Path(save_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(folder / TRAINING_LOG, mode="a", encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%Y-%m-%d %H:%M:%S"))
        self.handler.setLevel(logging.INFO)
        logging.getLogger().addHandler(self.handler)
        self.metrics = open(folder / METRICS, "a", encoding="utf-8")

    def write(self, kind: str, iteration: int, values: dict) -> None:
        """One line: {"kind": "train" | "validation", "iteration": N, ...}; NaN/inf become null."""
        if self.metrics is None:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}
        self.metrics.write(json.dumps({"kind": kind, "iteration": iteration, **clean}) + "\n")
        self.metrics.flush()

    def close(self) -> None:
        if self.handler is not None:
            logging.getLogger().removeHandler(self.handler)
            self.handler.close()
            self.handler = None
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
