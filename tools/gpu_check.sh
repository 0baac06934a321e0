#!/usr/bin/env bash
# The prepared GPU check, for a session that is lent a GPU machine (one H200 here: Python 3.12,
# torch preinstalled, no Transformer Engine, no Apex, no network). Under 8 minutes:
#   1. the GPU test tier (tests/gpu): logits vs transformers (fp32, bf16), packed == alone,
#      packed attention == Megatron's DotProductAttention, all on CUDA;
#   2. the training benchmark (tools/bench_gpu.py), Qwen3-0.6B shape, bf16, TP=1, realistic packs:
#      seq 4096 with --attention-backend auto and local, seq 16384 with auto (local would need ~224 GiB).
# Usage, from the repository root:  tools/gpu_wheels.sh .whl   (here, with PyPI), then on the GPU machine
#   tools/gpu_check.sh .whl          (OUT=DIR keeps the logs)
set -uo pipefail
wheels=${1:-.whl}
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
if compgen -G "$wheels/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$wheels"/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, megatron.core, transformers; print('torch', torch.__version__, '| megatron-core',
megatron.core.__version__, '| transformers', transformers.__version__)"
status=0
echo "== 1/2 GPU test tier"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tee "$out/gpu_tests.log" || status=1
echo "== 2/2 training benchmark"
for run in "4096 auto" "4096 local" "16384 auto"; do
    set -- $run
    timeout 150 python3 tools/bench_gpu.py --seq-length "$1" --backend "$2" $([ "$1 $2" = "4096 auto" ] && echo --profile) \
        2>&1 | tee "$out/bench_$1_$2.log" || status=1
done
exit $status
