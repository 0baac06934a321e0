#!/usr/bin/env bash
# Generate from MODEL: examples/generate.sh Qwen/Qwen3-0.6B
#
#   MLM_MODEL_CKPT  what to load: a Megatron checkpoint or a Hugging Face directory. Default: the fine-tuned
#                   checkpoint of finetune.sh (MLM_MODEL_SAVE, default $MLM_WORK_DIR/<MODEL>_sft) when there
#                   is one, else HF_MODEL_CKPT
#   PROMPTS_PATH    prompts: JSONL with "messages" (a final assistant turn is kept as the reference answer) or
#                   one plain-text prompt per line; default: a few built-in prompts
#   OUTPUT_PATH     also write the completions there (JSONL: prompt, completion, reference, stop reason)
#   MLM_EXTRA_ARGS  e.g. "--max-new-tokens 64 --temperature 0.7 --top-p 0.9 --enable-thinking"
#   TP PP EP ETP, LAUNCH_SCRIPT, MLM_WORK_DIR: see conf/arguments.sh
set -euo pipefail
# shellcheck source=../conf/arguments.sh
source "$(dirname "${BASH_SOURCE[0]}")/../conf/arguments.sh" "${1:-}"
msf_layout
msf_launcher
msf_inference_load
msf_note MLM_EXTRA_ARGS "${MLM_EXTRA_ARGS:-}"

PROMPT_ARGS=()
if [[ -n "${PROMPTS_PATH:-}" ]]; then
    [[ -f "$PROMPTS_PATH" ]] || msf_die "PROMPTS_PATH=$PROMPTS_PATH: no such file"
    PROMPT_ARGS=(--prompts-file "$PROMPTS_PATH")
fi
msf_note PROMPTS_PATH "${PROMPTS_PATH:-(built-in prompts)}"
if [[ -n "${OUTPUT_PATH:-}" ]]; then
    PROMPT_ARGS+=(--output "$OUTPUT_PATH")
    msf_note OUTPUT_PATH "$OUTPUT_PATH"
fi

CMD=("${LAUNCH[@]}" "$MSF_REPO_DIR/examples/generate.py" ${MODEL_ARGS[@]+"${MODEL_ARGS[@]}"})
msf_layout_args
CMD+=(--load "$LOAD" ${PROMPT_ARGS[@]+"${PROMPT_ARGS[@]}"})
msf_words "${MLM_EXTRA_ARGS:-}"
msf_run
