#!/usr/bin/env bash
# Download, on a machine with PyPI, the wheels tools/gpu_check.sh installs on a bare GPU machine
# (Python 3.12, x86-64, torch preinstalled): the pinned packages this project needs that such a
# machine lacks or has at other versions. Usage: tools/gpu_wheels.sh [DIR=.whl]
set -euo pipefail
dir=${1:-.whl}
mkdir -p "$dir"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
# Pins from pyproject.toml, plus what they need that the GPU image does not hold.
packages=(
    megatron-core==0.16.1 nvidia-modelopt==0.46.1 transformers==5.14.1 tokenizers==0.22.2 datasets==5.2.0
    dill==0.4.1 multiprocess==0.70.19 pulp==3.3.2 omegaconf==2.4.0
)
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$dir" "${packages[@]}"
du -sh "$dir"
