"""`python -m megatron_sft APP [FLAGS ...]`: run one application of the table in apps.py (APP --help lists its
flags); `python -m megatron_sft` alone lists them."""

from __future__ import annotations

import sys


def _usage() -> str:
    from megatron_sft.apps import APPS

    rows = "\n".join(f"  {a.name:<10} {a.summary}" for a in APPS.values())
    return f"usage: python -m megatron_sft APP [FLAGS ...]   (APP --help: its flags)\n\napplications:\n{rows}"


def main() -> int:
    from megatron_sft.apps import APPS
    from megatron_sft.apps import main as run_app

    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(_usage())
        return 0
    name = sys.argv[1]
    if name not in APPS:
        print(f"error: unknown application {name!r}\n{_usage()}", file=sys.stderr)
        return 2
    return run_app(name, sys.argv[2:], prog=f"python -m megatron_sft {name}")


if __name__ == "__main__":  # spawned helpers (dist_checkpointing's saver) re-import this module as __mp_main__
    from megatron_sft.cli import run_main

    run_main(main)
