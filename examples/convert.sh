#!/usr/bin/env bash
# Convert MODEL's checkpoints: examples/convert.sh Qwen/Qwen3-0.6B
#
# Hugging Face -> Megatron (MLM_MODEL_CKPT unset): imports HF_MODEL_CKPT into a weights-only Megatron
#   checkpoint at the layout TP/PP/EP/ETP, saved in MLM_MODEL_SAVE (default $MLM_WORK_DIR/<MODEL>_mlm).
#   finetune.sh can start from it: MLM_MODEL_CKPT=<that directory>.
# Megatron -> Hugging Face (MLM_MODEL_CKPT set): exports the checkpoint (saved at any layout, e.g. by
#   finetune.sh) to EXPORT_DIR (default $MLM_WORK_DIR/<MODEL>_export): weights, config, tokenizer and chat
#   template, loadable by transformers. Runs at TP=1 (PP allowed); EXPORT_DTYPE: fp32, bf16 or fp16
#   (default: the model's training dtype). A LoRA checkpoint (finetune.sh with PEFT=lora) exports as a PEFT
#   adapter folder for its base model, or with MERGE_LORA=1 as a full model with the adapters merged in.
#   TP PP EP ETP, LAUNCH_SCRIPT, MLM_WORK_DIR, MLM_EXTRA_ARGS: see conf/arguments.sh
set -euo pipefail
# shellcheck source=../conf/arguments.sh
source "$(dirname "${BASH_SOURCE[0]}")/../conf/arguments.sh" "${1:-}"

if [[ -n "${MLM_MODEL_CKPT:-}" ]]; then
    msf_note direction "Megatron -> Hugging Face"
    msf_megatron_iteration "$MLM_MODEL_CKPT" > /dev/null || msf_die "MLM_MODEL_CKPT=$MLM_MODEL_CKPT: not a complete" \
        "Megatron checkpoint (latest_checkpointed_iteration.txt and the directory it names)"
    IGNORED=""
    for name in TP CP EP ETP DP; do
        [[ -z "${!name:-}" || "${!name}" == 1 ]] || IGNORED+=" $name=${!name}"
        msf_force "$name" 1
    done
    msf_note note "export runs at TP=1 with one process per pipeline stage${IGNORED:+ (ignored:$IGNORED)}"
    msf_layout
    msf_launcher
    msf_note MLM_MODEL_CKPT "$MLM_MODEL_CKPT" env
    msf_setting EXPORT_DIR "$MLM_WORK_DIR/${MODEL}_export"
    if [[ "$(msf_abspath "$EXPORT_DIR")" == "$(msf_abspath "$MLM_MODEL_CKPT")" ]]; then
        msf_die "EXPORT_DIR=$EXPORT_DIR is the checkpoint being exported; choose another directory"
    fi
    LOAD="$MLM_MODEL_CKPT"
    SAVE="$EXPORT_DIR"
    DIRECTION_ARGS=()
    if [[ -n "${EXPORT_DTYPE:-}" ]]; then
        DIRECTION_ARGS=(--export-dtype "$EXPORT_DTYPE")
    fi
    msf_note EXPORT_DTYPE "${EXPORT_DTYPE:-(as trained: --bf16/--fp16 flags, else fp32)}"
    msf_setting MERGE_LORA 0
    case "$MERGE_LORA" in
        0) ;;
        1) DIRECTION_ARGS+=(--merge-lora) ;;
        *) msf_die "MERGE_LORA=$MERGE_LORA: use 1 (a LoRA checkpoint exported merged) or 0 (as a PEFT adapter)" ;;
    esac
else
    msf_note direction "Hugging Face -> Megatron"
    msf_layout
    msf_launcher
    msf_setting HF_MODEL_CKPT ""
    [[ -n "$HF_MODEL_CKPT" ]] || msf_die "set HF_MODEL_CKPT (a Hugging Face directory of $MODEL) to import it," \
        "or MLM_MODEL_CKPT (a Megatron checkpoint) to export it"
    msf_check_hf_dir HF_MODEL_CKPT
    msf_setting MLM_MODEL_SAVE "$MLM_WORK_DIR/${MODEL}_mlm"
    if [[ "$(msf_abspath "$MLM_MODEL_SAVE")" == "$(msf_abspath "$HF_MODEL_CKPT")" ]]; then
        msf_die "MLM_MODEL_SAVE=$MLM_MODEL_SAVE is the model being imported; choose another directory"
    fi
    LOAD="$HF_MODEL_CKPT"
    SAVE="$MLM_MODEL_SAVE"
    DIRECTION_ARGS=()
fi
msf_note MLM_EXTRA_ARGS "${MLM_EXTRA_ARGS:-}"

CMD=("${LAUNCH[@]}" "$MSF_REPO_DIR/tools/convert.py" ${MODEL_ARGS[@]+"${MODEL_ARGS[@]}"})
msf_layout_args
CMD+=(--load "$LOAD" --save "$SAVE" ${DIRECTION_ARGS[@]+"${DIRECTION_ARGS[@]}"})
msf_words "${MLM_EXTRA_ARGS:-}"
msf_run
