#!/usr/bin/env bash
# Preference training on the embedded default, after examples/demo.sh's fine-tuning (a CPU is enough; no network):
#   examples/demo_dpo.sh
#
# 1. the fine-tuned demo model, $MLM_WORK_DIR/<MODEL>/sft (examples/demo.sh runs first when it is missing);
# 2. a preference task it has no preference on: "pick: 372 815" answered with the larger number chosen, the
#    smaller rejected (tools/make_embedded_default.py prefs; megatron_sft/tiny/preference.py);
# 3. DPO through dpo.sh (conf/tiny.sh's CONF_DPO_* values: 3 epochs, under a minute on 2 CPU cores), writing a
#    Hugging Face directory beside the last checkpoint;
# 4. the held-out pairs' preference accuracy (transformers' log-probabilities of the chosen and rejected answers)
#    and the demo task's held-out reversal answers (generate.sh), before and after DPO.
#
# The environment works as for the scripts it calls (DPO_BETA, DPO_LOSS, TP, ...).
# DEMO_MIN_PREFERENCE (0.9) and DEMO_MIN_EXACT (0.9): exit 1 when a smaller share of held-out pairs is preferred
# rightly, or of the reversal answers is exact, after DPO.
set -euo pipefail
EXAMPLES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_DIR="$(dirname "$EXAMPLES_DIR")"
WORK_DIR="${MLM_WORK_DIR:-/tmp/megatron_workspace}"
MODEL="${MODEL:-tiny}"
if [ "$MODEL" != tiny ]; then  # the hybrid learns this rule slower than it forgets reversal: conf/tiny_hybrid.sh
    echo "error: MODEL=$MODEL: demo_dpo.sh runs MODEL=tiny (examples/dpo.sh takes any model)" >&2; exit 2
fi
TINY="$WORK_DIR/$MODEL"
THREADS="${OMP_NUM_THREADS:-1}"
SECONDS=0

echo "== 1/4 the fine-tuned demo model: $TINY/sft"
if [ ! -f "$TINY/sft/latest_checkpointed_iteration.txt" ] || [ ! -f "$TINY/after.jsonl" ]; then
    echo "not there yet: running examples/demo.sh first"
    MODEL="$MODEL" MLM_WORK_DIR="$WORK_DIR" "$EXAMPLES_DIR/demo.sh"
fi
SFT_HF="$TINY/sft/iter_$(printf %07d "$(cat "$TINY/sft/latest_checkpointed_iteration.txt")")/hf"
if [ ! -f "$SFT_HF/config.json" ]; then  # demo.sh ran with SAVE_HF=0
    SFT_HF="$TINY/sft_hf"
    CP=1 MLM_WORK_DIR="$WORK_DIR" MLM_MODEL_CKPT="$TINY/sft" EXPORT_DIR="$SFT_HF" \
        "$EXAMPLES_DIR/export.sh" "$MODEL" > "$TINY/export_sft.log" 2>&1 \
        || { tail -n 40 "$TINY/export_sft.log" >&2; exit 1; }
fi

echo "== 2/4 the preference task in $TINY"
python "$REPO_DIR/tools/make_embedded_default.py" prefs --out "$TINY"

echo "== 3/4 DPO from the fine-tuned model (OMP_NUM_THREADS=$THREADS)"
OMP_NUM_THREADS="$THREADS" MLM_WORK_DIR="$WORK_DIR" MLM_MODEL_CKPT="$TINY/sft" MLM_MODEL_SAVE="$TINY/dpo" \
    DATASET="$TINY/prefs.jsonl" MLM_RESUME=0 SAVE_HF=final "$EXAMPLES_DIR/dpo.sh" "$MODEL"
DPO_HF="$TINY/dpo/iter_$(printf %07d "$(cat "$TINY/dpo/latest_checkpointed_iteration.txt")")/hf"

echo "== 4/4 held-out pairs and reversal prompts, before and after DPO"
CP=1 OMP_NUM_THREADS="$THREADS" MLM_WORK_DIR="$WORK_DIR" MLM_MODEL_CKPT="$TINY/dpo" PROMPTS_PATH="$TINY/heldout.jsonl" \
    OUTPUT_PATH="$TINY/after_dpo.jsonl" MLM_EXTRA_ARGS="--max-new-tokens 8 ${MLM_EXTRA_ARGS:-}" \
    "$EXAMPLES_DIR/generate.sh" "$MODEL" > "$TINY/after_dpo.log" 2>&1 || { tail -n 40 "$TINY/after_dpo.log" >&2; exit 1; }
status=0
python "$REPO_DIR/tools/make_embedded_default.py" report --before "$TINY/after.jsonl" \
    --after "$TINY/after_dpo.jsonl" --min-exact "${DEMO_MIN_EXACT:-0.9}" \
    | tail -n 1 | sed 's/^exact answers/reversal task: exact answers/' || status=1
python "$REPO_DIR/tools/make_embedded_default.py" prefer --before "$SFT_HF" --after "$DPO_HF" \
    --pairs "$TINY/prefs_heldout.jsonl" --min-accuracy "${DEMO_MIN_PREFERENCE:-0.9}" || status=1
echo "demo_dpo done in ${SECONDS} s; DPO checkpoint: $TINY/dpo; Hugging Face model: $DPO_HF"
exit $status
