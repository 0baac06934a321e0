"""A progress bar with the figures that matter, and a log line every --log-interval."""

from __future__ import annotations

import logging
import math
import os

log = logging.getLogger(__name__)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def figure_format(name: str) -> str:
    """A loss next to the main one may be tiny (a student close to its teacher): significant digits for it."""
    return ".5g" if name.endswith("_loss") else ".4f"


def shown(name: str) -> bool:
    """In the progress line besides the standard figures: the objective's (DPO's rewards/..., distillation's
    kd_loss and lm_loss) and a blend's per-source losses; per-source counts only in the files (compact)."""
    return ("/" in name or name.endswith("_loss")) and not name.startswith(("supervised_tokens/", "samples/"))


class Progress:
    """tqdm bar on rank 0 (ETA included); plain log lines when output is not a terminal."""

    def __init__(self, start: int, total: int, log_interval: int):
        self.total, self.log_interval = total, max(1, log_interval)
        self.bar = None
        if int(os.environ.get("RANK", "0")) == 0:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc="finetune", unit="it", dynamic_ncols=True,
                            disable=None, leave=True)

    def update(self, iteration: int, fig: dict) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(
                f"loss {_fmt(fig['loss'], '.4f')} lr {_fmt(fig['lr'], '.2e')} gnorm {_fmt(fig['grad_norm'], '.3f')} "
                f"tok/s {_fmt(fig['tokens_per_s'], '.0f')} sup/s {_fmt(fig['supervised_per_s'], '.0f')}",
                refresh=False,
            )
            self.bar.update(1)
        if iteration % self.log_interval == 0 or iteration == self.total:
            mfu = f" | MFU {fig['mfu'] * 100:.1f}%" if fig.get("mfu") is not None else ""
            # the objective's own figures: DPO's rewards/..., distillation's kd_loss and lm_loss
            extra = "".join(f" | {k} {_fmt(v, figure_format(k))}" for k, v in fig.items() if shown(k))
            log.info(
                "iteration %d/%d | loss %s | lr %s | grad norm %s | %.2f s/it | tokens/s %s "
                "| supervised tokens/s %s%s%s",
                iteration, self.total, _fmt(fig["loss"], ".5f"), _fmt(fig["lr"], ".3e"),
                _fmt(fig["grad_norm"], ".4f"), fig["seconds"], _fmt(fig["tokens_per_s"], ".1f"),
                _fmt(fig["supervised_per_s"], ".1f"), mfu, extra,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
