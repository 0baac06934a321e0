#!/usr/bin/env bash
# examples/quantize.sh MODEL [QUANT_CFG] (a config in conf/, e.g. Qwen/Qwen3-0.6B); its variables: examples/quantize.sh --help.
# The settings, their checks and the launch command are made in Python: megatron_sft/launch/scripts.py.
exec python -m megatron_sft.launch --checkout "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)" quantize "$@"
