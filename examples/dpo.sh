#!/usr/bin/env bash
# examples/dpo.sh MODEL (a config in conf/): preference training after finetune.sh; its variables: examples/dpo.sh --help.
# The settings, their checks and the launch command are made in Python: megatron_sft/launch/scripts.py.
exec python -m megatron_sft.launch --checkout "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)" dpo "$@"
