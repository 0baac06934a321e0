#!/usr/bin/env bash
# Fine-tune MODEL (a config in conf/) on chat data: examples/finetune.sh Qwen/Qwen3-0.6B
#
#   HF_MODEL_CKPT   the Hugging Face model to start from (imported on the fly)
#   MLM_MODEL_CKPT  or a Megatron checkpoint to start from (its weights; a new run)
#   MLM_MODEL_SAVE  where checkpoints go (default $MLM_WORK_DIR/<MODEL>_sft). When it already holds a complete
#                   training checkpoint, the run resumes from it (optimizer, schedule, data position);
#                   MLM_RESUME=0 starts over instead.
#   DATASET         a JSONL file or directory of chat records (--data-path), or a Hugging Face dataset name
#                   (--finetune-hf-dataset); default: the tutorial's Magpie dataset
#   PEFT            lora: train LoRA adapters on the frozen model (default none: full fine-tuning); checkpoints
#                   hold the adapters only; LORA_RANK (16) and LORA_ALPHA (32) size them. A conf may give LoRA its
#                   own CONF_LORA_MLM_OPTIM_ARGS / CONF_LORA_MLM_DATA_ARGS (e.g. a higher learning rate)
#   EPOCHS          train for this many passes over the training data (--train-epochs); it replaces the run
#                   length (--train-iters/--train-samples and their schedule lengths) of the default or the conf
#   MLM_DATA_ARGS MLM_OPTIM_ARGS MLM_TRAIN_ARGS MLM_EVAL_ARGS MLM_EXTRA_ARGS   flags (defaults below)
#   TP PP CP EP ETP DP, NNODES ..., LAUNCH_SCRIPT, MLM_WORK_DIR: see conf/arguments.sh
set -euo pipefail
# shellcheck source=../conf/arguments.sh
source "$(dirname "${BASH_SOURCE[0]}")/../conf/arguments.sh" "${1:-}"
msf_layout
msf_launcher

DEFAULT_DATASET="Magpie-Align/Magpie-Llama-3.1-Pro-MT-300K-Filtered"
DEFAULT_LR="--lr 5.0e-5"
PEFT_ARGS=()
msf_setting PEFT none
case "$PEFT" in
    none) ;;
    lora)
        DEFAULT_LR="--lr 1.0e-4"  # the LoRA recipes' learning rate
        for name in MLM_DATA_ARGS MLM_OPTIM_ARGS; do  # the conf's LoRA values replace its full fine-tuning ones
            lora_conf="CONF_LORA_$name"
            [[ -z "${!lora_conf:-}" ]] || printf -v "CONF_$name" '%s' "${!lora_conf}"
        done
        msf_setting LORA_RANK 16
        msf_setting LORA_ALPHA 32
        msf_positive_int LORA_RANK
        PEFT_ARGS=(--peft lora --lora-rank "$LORA_RANK" --lora-alpha "$LORA_ALPHA")
        ;;
    *) msf_die "PEFT=$PEFT: use lora (LoRA adapters) or none (full fine-tuning)" ;;
esac
msf_setting MLM_DATA_ARGS "--train-samples 128000 --lr-decay-samples 128000 --lr-warmup-samples 0 --split 100,0,0"
if [[ -n "${EPOCHS:-}" ]]; then
    msf_positive_int EPOCHS
    [[ "$MSF_ORIGIN" == env ]] || MLM_DATA_ARGS="$(msf_drop_run_length "$MLM_DATA_ARGS")"
    MLM_DATA_ARGS+=" --train-epochs $EPOCHS"
    msf_note EPOCHS "$EPOCHS" "env: MLM_DATA_ARGS becomes '$MLM_DATA_ARGS'"
fi
msf_setting MLM_OPTIM_ARGS "$DEFAULT_LR --min-lr 1.0e-7 --lr-decay-style cosine --clip-grad 1.0 --weight-decay 0.0 \
--adam-beta1 0.9 --adam-beta2 0.95 --use-distributed-optimizer"
msf_setting MLM_TRAIN_ARGS "--micro-batch-size 1"
msf_setting MLM_EVAL_ARGS "--eval-iters 1 --eval-interval 1000 --save-interval 1000 --log-interval 100"
msf_note MLM_EXTRA_ARGS "${MLM_EXTRA_ARGS:-}"

# Data: DATASET, unless MLM_DATA_ARGS names the data itself (the tutorial's way).
DATA_ARGS=()
if msf_has_flag --data-path "$MLM_DATA_ARGS" || msf_has_flag --finetune-hf-dataset "$MLM_DATA_ARGS"; then
    [[ -z "${DATASET:-}" ]] || msf_die "DATASET=$DATASET and MLM_DATA_ARGS both name the training data; keep one"
    msf_note DATASET "(in MLM_DATA_ARGS)"
else
    msf_setting DATASET "$DEFAULT_DATASET"
    if msf_is_path "$DATASET"; then
        [[ -e "$DATASET" ]] || msf_die "DATASET=$DATASET: no such file"
        DATA_ARGS=(--data-path "$DATASET")
    else
        DATA_ARGS=(--finetune-hf-dataset "$DATASET")
    fi
fi
if ! msf_has_flag --data-cache-dir "$MLM_DATA_ARGS" "${MLM_EXTRA_ARGS:-}"; then
    DATA_ARGS+=(--data-cache-dir "$MLM_WORK_DIR/data_cache")
fi

# Where to start, where to save, and whether this is a resume.
msf_setting MLM_MODEL_SAVE "$MLM_WORK_DIR/${MODEL}_sft"
msf_value MLM_RESUME 1
[[ "$MLM_RESUME" == 0 || "$MLM_RESUME" == 1 ]] || msf_die "MLM_RESUME=$MLM_RESUME: use 1 (resume, default) or 0"
LOAD_ARGS=()
if [[ "$MLM_RESUME" == 1 ]] && msf_training_checkpoint "$MLM_MODEL_SAVE"; then
    ITERATION="$(msf_megatron_iteration "$MLM_MODEL_SAVE")"
    STATE="$MLM_MODEL_SAVE/$(printf 'iter_%07d' "$((10#$ITERATION))")/train_state.json"
    # The optimizer state reshards over DP only: TP, PP and EP must be those the run was saved at.
    SAVED="$(tr -d ' \n' < "$STATE" | grep -o '"layout":{[^}]*}' || true)"
    if [[ -n "$SAVED" ]]; then
        saved_size() { grep -o "\"$1\":[0-9]*" <<< "$SAVED" | cut -d: -f2; }
        SAVED_CP="$(saved_size cp)"
        SAVED_LAYOUT="TP=$(saved_size tp) PP=$(saved_size pp) EP=$(saved_size ep) CP=${SAVED_CP:-1}"
        if [[ "$SAVED_LAYOUT" != "TP=$TP PP=$PP EP=$EP CP=$CP" ]]; then
            msf_die "MLM_MODEL_SAVE=$MLM_MODEL_SAVE was saved at $SAVED_LAYOUT, not TP=$TP PP=$PP EP=$EP CP=$CP;" \
                "resume at the saved TP, PP, EP and CP (DP may change), or set MLM_RESUME=0 to start over"
        fi
    fi
    LOAD_ARGS=(--load "$MLM_MODEL_SAVE")
    msf_note start "resuming $MLM_MODEL_SAVE from iteration $ITERATION (MLM_RESUME=0 starts over)"
else
    if [[ -n "${MLM_MODEL_CKPT:-}" ]]; then
        msf_check_checkpoint MLM_MODEL_CKPT
        START="$MLM_MODEL_CKPT"
        msf_note start "MLM_MODEL_CKPT=$START (weights only: a new run)"
    else
        msf_setting HF_MODEL_CKPT ""
        [[ -n "$HF_MODEL_CKPT" ]] || msf_die "set HF_MODEL_CKPT to a local Hugging Face directory of $MODEL" \
            "(e.g. hf download $MODEL --local-dir DIR), or MLM_MODEL_CKPT to a Megatron checkpoint"
        msf_check_hf_dir HF_MODEL_CKPT
        START="$HF_MODEL_CKPT"
        msf_note start "HF_MODEL_CKPT=$START (imported on the fly)"
    fi
    if [[ "$(msf_abspath "$START")" == "$(msf_abspath "$MLM_MODEL_SAVE")" ]]; then
        msf_die "MLM_MODEL_SAVE=$MLM_MODEL_SAVE is the checkpoint the run starts from; save somewhere else"
    fi
    if [[ "$MLM_RESUME" == 0 ]] && msf_training_checkpoint "$MLM_MODEL_SAVE"; then
        msf_note note "MLM_RESUME=0: starting over; new checkpoints replace those in $MLM_MODEL_SAVE"
    fi
    LOAD_ARGS=(--load "$START" --finetune)
fi

CMD=("${LAUNCH[@]}" "$MSF_REPO_DIR/examples/finetune.py" ${MODEL_ARGS[@]+"${MODEL_ARGS[@]}"}
    ${MODEL_TRAIN_ARGS[@]+"${MODEL_TRAIN_ARGS[@]}"})
msf_layout_args
CMD+=("${LOAD_ARGS[@]}" --save "$MLM_MODEL_SAVE" --distributed-timeout-minutes 30 "${DATA_ARGS[@]}"
    ${PEFT_ARGS[@]+"${PEFT_ARGS[@]}"})
msf_words "$MLM_DATA_ARGS"
msf_words "$MLM_OPTIM_ARGS"
msf_words "$MLM_TRAIN_ARGS"
msf_words "$MLM_EVAL_ARGS"
msf_words "${MLM_EXTRA_ARGS:-}"
msf_run
