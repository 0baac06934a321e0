#!/usr/bin/env bash
# examples/export.sh MODEL (a config in conf/, e.g. Qwen/Qwen3-0.6B); its variables: examples/export.sh --help.
# The settings, their checks and the launch command are made in Python: megatron_sft/launch/scripts.py.
exec python -m megatron_sft.launch --checkout "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)" export "$@"
