#!/usr/bin/env bash
# MMLU accuracy of MODEL: examples/mmlu.sh Qwen/Qwen3-0.6B
#
#   MLM_MODEL_CKPT  what to load, as in generate.sh (default: the fine-tuned checkpoint, else HF_MODEL_CKPT)
#   MMLU_DATASET    a Hugging Face dataset name (default cais/mmlu) or a local directory (dev/ and test/ CSVs)
#   MLM_EXTRA_ARGS  e.g. "--few-shot 5 --fraction 0.1 --lower-bound 0.4 --results mmlu.json"
#   TP PP EP ETP, LAUNCH_SCRIPT, MLM_WORK_DIR: see conf/arguments.sh
set -euo pipefail
# shellcheck source=../conf/arguments.sh
source "$(dirname "${BASH_SOURCE[0]}")/../conf/arguments.sh" "${1:-}"
msf_layout
msf_launcher
msf_inference_load
msf_note MLM_EXTRA_ARGS "${MLM_EXTRA_ARGS:-}"

msf_setting MMLU_DATASET cais/mmlu
if msf_is_path "$MMLU_DATASET"; then
    [[ -d "$MMLU_DATASET" ]] || msf_die "MMLU_DATASET=$MMLU_DATASET: no such directory"
fi

CMD=("${LAUNCH[@]}" "$MSF_REPO_DIR/examples/mmlu.py" ${MODEL_ARGS[@]+"${MODEL_ARGS[@]}"})
msf_layout_args
CMD+=(--load "$LOAD" --mmlu-dataset "$MMLU_DATASET")
msf_words "${MLM_EXTRA_ARGS:-}"
msf_run
