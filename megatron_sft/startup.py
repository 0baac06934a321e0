"""The start of every application once its flags are checked: device, layer spec, process groups and parallel
state, then where each value came from and the notices, in the log (the Python counterpart of the shell scripts'
settings block). apps.main runs the rest: logging, parse, pre-model checks, the app's run, shutdown."""

from __future__ import annotations

import logging

from megatron_sft.config import RunConfig

log = logging.getLogger(__name__)


def start(cfg: RunConfig, training: bool = False) -> RunConfig:
    """Returns the config with the device and the layer implementation resolved."""
    from megatron_sft.arguments.resolve import describe_sources
    from megatron_sft.runtime.distributed import init_from_args

    cfg = init_from_args(cfg, training=training)
    for line in [*describe_sources(cfg), *(f"note: {n}" for n in cfg.notices)]:
        log.info("%s", line)
    return cfg
