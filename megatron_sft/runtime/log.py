"""Logging that prints once per job (rank 0) unless asked for every rank."""

from __future__ import annotations

import logging
import os
import sys


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def setup_logging(level: int = logging.INFO) -> None:
    """Rank 0 logs at `level`; other ranks only warnings and errors."""
    root = logging.getLogger()
    if getattr(root, "_megatron_sft_configured", False):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[%(asctime)s rank%(rank)s] %(message)s", "%H:%M:%S"))
    handler.addFilter(_RankFilter())
    root.addHandler(handler)
    root.setLevel(level if rank() == 0 else logging.WARNING)
    root._megatron_sft_configured = True  # type: ignore[attr-defined]
    for noisy in ("megatron", "modelopt", "torch.distributed", "datasets", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _RankFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = rank()
        return True
