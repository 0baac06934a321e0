"""Plan a script's launch, print the settings block, check the command with the entry's own parser, exec it.

    python -m megatron_sft.launch [--checkout DIR] SCRIPT MODEL

The shell scripts pass their own checkout (conf/ and examples/ live there, not in an installed package);
without --checkout, the checkout the package was imported from (an editable install or a source tree)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from megatron_sft.errors import UserError
from megatron_sft.launch.conf import REPO_DIR, read_conf
from megatron_sft.launch.scripts import SCRIPTS, Plan
from megatron_sft.launch.settings import Settings

COMMON_HELP = """
Every script also reads:
  TP PP CP EP ETP DP  tensor / pipeline / context / expert / expert-tensor / data parallel sizes (default 1, ETP: TP);
                      processes = TP x PP x CP x DP, and EP x ETP must divide TP x CP x DP
  NNODES NODE_RANK MASTER_ADDR MASTER_PORT   multi-node torchrun rendezvous (default: one node)
  NPROC_PER_NODE      if set: the processes one node runs; the layout must fill NNODES x NPROC_PER_NODE exactly
  LAUNCH_SCRIPT       replaces the launcher (default: python for one process, else torchrun through
                      python -m megatron_sft.launch.torchrun, which keeps a user error to its one line)
  MLM_WORK_DIR        where default outputs go (default /tmp/megatron_workspace)
Flags after MODEL (examples/finetune.sh tiny --train-iters 2) are appended last, after MLM_EXTRA_ARGS.
Each value comes from the environment, else from the model's conf (CONF_<NAME> in conf/<MODEL>.sh), else from
the default; the settings block printed before launch shows which.
"""


def check_command(script: str, plan: Plan) -> None:
    """The app's own parse and checks (apps.py), at the launch's world size: the same checks, the same words."""
    from megatron_sft.apps import parse

    parse(script, plan.flags, world_size=plan.layout.nproc)


def plan_launch(script: str, model: str, env: dict[str, str], checkout: Path = REPO_DIR,
                extra: list[str] | None = None) -> tuple[Settings, Plan]:
    """`extra`: flags given after MODEL on the command line, appended last (after MLM_EXTRA_ARGS), so they win."""
    s = Settings(env, {})
    work = s.setting("MLM_WORK_DIR", "/tmp/megatron_workspace")
    conf = read_conf(model, work, conf_dir=checkout / "conf", script=f"{script}.sh")
    s.conf = dict(conf.defaults)
    s.command_line = list(extra or [])
    plan = SCRIPTS[script](s, conf, work)
    extra = s.command_line  # what the script did not take (quantize.sh takes QUANT_CFG)
    if extra:
        plan.flags += extra
        s.note("arguments", " ".join(extra), "command line, after MODEL: appended last")
    check_command(script, plan)
    return s, plan


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    checkout = REPO_DIR
    if argv[:1] == ["--checkout"] and len(argv) > 1:
        checkout, argv = Path(argv[1]), argv[2:]
    if not argv or argv[0] not in SCRIPTS:
        sys.exit(f"usage: python -m megatron_sft.launch [--checkout DIR] {{{','.join(SCRIPTS)}}} MODEL [FLAGS ...] | "
                 "--help")
    script, rest = argv[0], argv[1:]
    if rest and rest[0] in ("-h", "--help"):
        print(SCRIPTS[script].__doc__ + COMMON_HELP)
        return
    model = rest[0] if rest else ""
    if not (checkout / "conf").is_dir():
        sys.exit(f"{script}.sh: error: no conf/ in {checkout}; run examples/{script}.sh from a megatron_sft checkout")
    try:
        s, plan = plan_launch(script, model, dict(os.environ), checkout, rest[1:])
    except UserError as err:
        for line in str(err).splitlines():
            print(f"{script}.sh: error: {line}", file=sys.stderr)
        sys.exit(2)
    command = [*plan.launch, str(checkout / plan.entry), *plan.flags]
    print(f"== {script}.sh {model} (conf/{model}.sh)")
    for line in s.lines:
        print(f"  {line}")
    print(f"  {'command':<15} {' '.join(command)}", flush=True)
    os.execvp(command[0], command)
