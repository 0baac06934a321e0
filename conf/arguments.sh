# shellcheck shell=bash disable=SC2034  # sets variables for the scripts that source it
# Shared by examples/{finetune,generate,mmlu,convert}.sh:  source conf/arguments.sh MODEL
#
# Turns environment variables into a model config, a parallel layout, a process count and a launcher,
# and checks them before any Python process starts. Nothing here installs or exports anything.
#
#   MODEL            conf/<MODEL>.sh, e.g. Qwen/Qwen3-0.6B: MODEL_ARGS (that model's flags), CONF_* (its defaults)
#   TP PP CP EP ETP  tensor / pipeline / context / expert / expert-tensor parallel sizes (default 1; ETP: TP)
#   DP               data-parallel size (default 1). Processes = TP x PP x CP x DP; EP x ETP must divide TP x CP x DP
#   NNODES NODE_RANK MASTER_ADDR MASTER_PORT   multi-node torchrun rendezvous (default: one node)
#   NPROC_PER_NODE   if set: the processes one node runs; the layout must fill NNODES x NPROC_PER_NODE exactly
#   LAUNCH_SCRIPT    replaces the launcher (default: python for one process, torchrun for more)
#   MLM_WORK_DIR     where default outputs go (default /tmp/megatron_workspace)
#   MLM_EXTRA_ARGS   more flags, appended last (they win over earlier ones)
#
# Each value comes from the environment, else from the model's conf (CONF_<NAME>), else from the default
# here; the settings block printed before launch shows which.

MSF_CONF_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
MSF_REPO_DIR="$(dirname "$MSF_CONF_DIR")"
MSF_SCRIPT="$(basename "$0")"
MSF_SETTINGS=()  # lines of the settings block
CMD=()           # the command being built

msf_die() {
    printf '%s: error: %s\n' "$MSF_SCRIPT" "$*" >&2
    exit 1
}

msf_models() {
    (cd "$MSF_CONF_DIR" && find . -name '*.sh' ! -name arguments.sh | sed -e 's|^\./||' -e 's|\.sh$||' | sort)
}

msf_load_model() {
    MODEL="${1:-}"
    local models
    models="$(msf_models | tr '\n' ' ')"
    if [[ -z "$MODEL" ]]; then
        msf_die "usage: $MSF_SCRIPT MODEL, with MODEL one of: ${models% }"
    fi
    MSF_MODEL_CONF="$MSF_CONF_DIR/$MODEL.sh"
    if [[ "$MODEL" == *..* || "$MODEL" == arguments || ! -f "$MSF_MODEL_CONF" ]]; then
        msf_die "unknown MODEL '$MODEL'; configs in conf/: ${models% }"
    fi
    unset CONF_TP CONF_PP CONF_CP CONF_EP CONF_ETP CONF_DP CONF_HF_MODEL_CKPT CONF_DATASET
    unset CONF_MLM_DATA_ARGS CONF_MLM_OPTIM_ARGS CONF_MLM_TRAIN_ARGS CONF_MLM_EVAL_ARGS
    MODEL_ARGS=()
    MODEL_TRAIN_ARGS=()
    # shellcheck source=/dev/null
    source "$MSF_MODEL_CONF"
}

# msf_note NAME VALUE [ORIGIN]: one line of the settings block.
msf_note() {
    MSF_SETTINGS+=("$(printf '%-15s %s%s' "$1" "${2:-(none)}" "${3:+  ($3)}")")
}

# msf_value NAME DEFAULT: NAME from the environment, else CONF_NAME, else DEFAULT; MSF_ORIGIN: where from.
msf_value() {
    local name="$1" fallback="$2" conf="CONF_$1" forced="MSF_FORCED_$1"
    if [[ -n "${!forced:-}" ]]; then
        MSF_ORIGIN="${!forced}"
    elif [[ -n "${!name:-}" ]]; then
        MSF_ORIGIN="env"
    elif [[ -n "${!conf:-}" ]]; then
        printf -v "$name" '%s' "${!conf}"
        MSF_ORIGIN="conf"
    else
        printf -v "$name" '%s' "$fallback"
        MSF_ORIGIN="default"
    fi
}

# msf_setting NAME DEFAULT: msf_value, noted in the settings block with its origin.
msf_setting() {
    msf_value "$1" "$2"
    msf_note "$1" "${!1}" "$MSF_ORIGIN"
}

# msf_force NAME VALUE: a value this script needs, whatever the environment or the conf say.
msf_force() {
    printf -v "$1" '%s' "$2"
    printf -v "MSF_FORCED_$1" '%s' forced
}

msf_positive_int() {
    local name="$1"
    [[ "${!name}" =~ ^[1-9][0-9]*$ ]] || msf_die "$name=${!name}: must be a positive integer"
}

# msf_words STRING: append its whitespace-separated words to CMD (no globbing, no eval).
msf_words() {
    local words=()
    read -r -a words <<< "$1" || true
    CMD+=(${words[@]+"${words[@]}"})
}

# msf_has_flag FLAG STRING...: whether FLAG is one of the words of the strings.
msf_has_flag() {
    local flag="$1" words=() word
    read -r -a words <<< "${*:2}" || true
    for word in ${words[@]+"${words[@]}"}; do
        [[ "$word" == "$flag" || "$word" == "$flag="* ]] && return 0
    done
    return 1
}

# msf_drop_run_length "FLAGS": FLAGS without the run-length flags and their values (EPOCHS replaces them).
msf_drop_run_length() {
    local words=() kept=() skip=0 word
    read -r -a words <<< "$1" || true
    for word in ${words[@]+"${words[@]}"}; do
        if ((skip)); then skip=0; continue; fi
        case "$word" in
            --train-iters | --train-samples | --lr-decay-iters | --lr-decay-samples | --lr-warmup-samples) skip=1 ;;
            --train-iters=* | --train-samples=* | --lr-decay-iters=* | --lr-decay-samples=* | --lr-warmup-samples=*) ;;
            *) kept+=("$word") ;;
        esac
    done
    printf '%s' "${kept[*]-}"
}

# msf_abspath PATH: absolute and symlink-free when it exists, unchanged otherwise.
msf_abspath() {
    if [[ -d "$1" ]]; then
        (cd "$1" && pwd -P)
    else
        printf '%s\n' "$1"
    fi
}

# msf_is_path VALUE: a local path (exists, or written like one) rather than a Hugging Face hub name.
msf_is_path() {
    [[ -e "$1" || "$1" == /* || "$1" == .* || "$1" == "~"* || "$1" == *.json || "$1" == *.jsonl ]]
}

# msf_megatron_iteration DIR: the iteration (or "release") DIR's tracker names, if that checkpoint is complete.
msf_megatron_iteration() {
    local dir="$1" text sub
    [[ -f "$dir/latest_checkpointed_iteration.txt" ]] || return 1
    text="$(tr -d '[:space:]' < "$dir/latest_checkpointed_iteration.txt")"
    if [[ "$text" == release ]]; then
        sub=release
    elif [[ "$text" =~ ^[0-9]+$ ]]; then
        sub="$(printf 'iter_%07d' "$((10#$text))")"
    else
        return 1
    fi
    [[ -f "$dir/$sub/metadata.json" ]] || return 1
    printf '%s\n' "$text"
}

# msf_training_checkpoint DIR: true when DIR's latest checkpoint is a complete training checkpoint.
msf_training_checkpoint() {
    local it
    it="$(msf_megatron_iteration "$1")" || return 1
    [[ "$it" != release && -f "$1/$(printf 'iter_%07d' "$((10#$it))")/train_state.json" ]]
}

# msf_check_hf_dir NAME: $NAME must be a Hugging Face model directory.
msf_check_hf_dir() {
    local name="$1" dir="${!1}"
    [[ -e "$dir" ]] || msf_die "$name=$dir: no such directory"
    [[ -f "$dir/config.json" ]] || msf_die "$name=$dir: no config.json; not a Hugging Face model directory"
}

# msf_check_checkpoint NAME: $NAME must be a Hugging Face directory or a complete Megatron checkpoint.
msf_check_checkpoint() {
    local name="$1" dir="${!1}"
    [[ -e "$dir" ]] || msf_die "$name=$dir: no such directory"
    [[ -f "$dir/config.json" ]] || msf_megatron_iteration "$dir" > /dev/null \
        || msf_die "$name=$dir: neither a Hugging Face model (config.json) nor a complete Megatron checkpoint" \
            "(latest_checkpointed_iteration.txt and the directory it names)"
}

# msf_layout: parallel sizes, process count, EP/ETP fit and nodes; sets NPROC and NPROC_NODE.
msf_layout() {
    local name value sizes="" origins=""
    for name in TP PP CP DP EP ETP NNODES; do
        if [[ "$name" == ETP ]]; then msf_value ETP "$TP"; else msf_value "$name" 1; fi
        msf_positive_int "$name"
        value="${!name}"
        [[ "$name" == NNODES ]] || sizes+="$name=$value "
        [[ "$MSF_ORIGIN" == default || "$MSF_ORIGIN" == forced ]] || origins+="$name: $MSF_ORIGIN, "
    done
    NPROC=$((TP * PP * CP * DP))
    local stage=$((TP * CP * DP))
    if ((stage % (EP * ETP))); then
        msf_die "EP=$EP x ETP=$ETP = $((EP * ETP)) must divide TP x CP x DP = $TP x $CP x $DP = $stage" \
            "(the ranks of one pipeline stage); lower EP or ETP, or raise DP"
    fi
    if ((NPROC % NNODES)); then
        msf_die "TP x PP x CP x DP = $NPROC processes do not split evenly over NNODES=$NNODES nodes"
    fi
    NPROC_NODE=$((NPROC / NNODES))
    if [[ -n "${NPROC_PER_NODE:-}" ]]; then
        msf_positive_int NPROC_PER_NODE
        local offered=$((NNODES * NPROC_PER_NODE))
        if ((offered != NPROC)); then
            msf_die "TP x PP x CP x DP = $TP x $PP x $CP x $DP = $NPROC processes, but NNODES x NPROC_PER_NODE =" \
                "$NNODES x $NPROC_PER_NODE = $offered; choose TP, PP, CP and DP whose product is $offered"
        fi
    fi
    local plural="es"
    ((NPROC > 1)) || plural=""
    msf_note layout "${sizes% } -> $NPROC process$plural (TP x PP x CP x DP) on $NNODES node(s)" "${origins%, }"
}

# msf_launcher: LAUNCH, the command that starts a Python script on NPROC_NODE processes of this node.
msf_launcher() {
    LAUNCH=()
    if [[ -n "${LAUNCH_SCRIPT:-}" ]]; then
        read -r -a LAUNCH <<< "$LAUNCH_SCRIPT"
        msf_note LAUNCH_SCRIPT "$LAUNCH_SCRIPT" env
        return
    fi
    if ((NNODES > 1)); then
        [[ -n "${MASTER_ADDR:-}" ]] || msf_die "NNODES=$NNODES: set MASTER_ADDR to the host name of node 0"
        if [[ ! "${NODE_RANK:-}" =~ ^[0-9]+$ ]] || ((NODE_RANK >= NNODES)); then
            msf_die "NNODES=$NNODES: set NODE_RANK to this node's rank, 0 .. $((NNODES - 1)) (got '${NODE_RANK:-}')"
        fi
        LAUNCH=(torchrun --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$NPROC_NODE"
            --master_addr="$MASTER_ADDR" --master_port="${MASTER_PORT:-29500}")
    elif ((NPROC > 1)); then
        LAUNCH=(torchrun --standalone --nproc_per_node="$NPROC")
    else
        LAUNCH=(python)
    fi
    msf_note launcher "${LAUNCH[*]}"
}

# msf_layout_args: the parallel-layout flags of every entry script.
msf_layout_args() {
    CMD+=(--tensor-model-parallel-size "$TP" --pipeline-model-parallel-size "$PP" --context-parallel-size "$CP"
        --expert-model-parallel-size "$EP" --expert-tensor-parallel-size "$ETP")
}

# msf_inference_load: LOAD for generate/mmlu: MLM_MODEL_CKPT, else the fine-tuned checkpoint in
# MLM_MODEL_SAVE (default $MLM_WORK_DIR/<MODEL>_sft) when there is one, else HF_MODEL_CKPT.
msf_inference_load() {
    local save="${MLM_MODEL_SAVE:-$MLM_WORK_DIR/${MODEL}_sft}"
    if [[ -n "${MLM_MODEL_CKPT:-}" ]]; then
        msf_check_checkpoint MLM_MODEL_CKPT
        LOAD="$MLM_MODEL_CKPT"
        msf_note load "$LOAD" "MLM_MODEL_CKPT"
    elif msf_megatron_iteration "$save" > /dev/null; then
        LOAD="$save"
        msf_note load "$LOAD" "MLM_MODEL_SAVE: the fine-tuned checkpoint"
    elif [[ -n "${MLM_MODEL_SAVE:-}" ]]; then
        msf_die "MLM_MODEL_SAVE=$MLM_MODEL_SAVE: no complete checkpoint there (latest_checkpointed_iteration.txt)"
    else
        msf_setting HF_MODEL_CKPT ""
        [[ -n "$HF_MODEL_CKPT" ]] || msf_die "nothing to load: set MLM_MODEL_CKPT (a Megatron checkpoint or a" \
            "Hugging Face directory) or HF_MODEL_CKPT, or fine-tune first (no checkpoint in $save)"
        msf_check_hf_dir HF_MODEL_CKPT
        LOAD="$HF_MODEL_CKPT"
        msf_note load "$LOAD" "HF_MODEL_CKPT"
    fi
}

# msf_run: print the settings block and the command, then replace this shell with the command.
msf_run() {
    printf '== %s %s (conf/%s.sh)\n' "$MSF_SCRIPT" "$MODEL" "$MODEL"
    printf '  %s\n' "${MSF_SETTINGS[@]}"
    printf '  command         %s\n' "${CMD[*]}"
    exec "${CMD[@]}"
}

msf_setting MLM_WORK_DIR /tmp/megatron_workspace
msf_load_model "${1:-}"
