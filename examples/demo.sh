#!/usr/bin/env bash
# The embedded default, end to end, on any machine (a CPU is enough; no network): examples/demo.sh
#
# 1. builds a tiny Qwen3 with a character-level tokenizer and a synthetic chat task (reverse a string of up
#    to 6 letters) under $MLM_WORK_DIR/tiny (tools/make_embedded_default.py);
# 2. answers the held-out prompts with the untrained model (generate.sh);
# 3. fine-tunes it through finetune.sh (conf/tiny.sh: 1000 iterations, about 2 minutes on 2 CPU cores), writing a
#    Hugging Face directory beside the last checkpoint (SAVE_HF=final; SAVE_HF=0 skips it);
# 4. answers the same prompts again and prints both answers side by side, with the exact-match rates.
#
# The environment works as for the scripts it calls, e.g. MLM_DATA_ARGS="--train-iters 40" for a shorter run,
# or CP=2 to fine-tune with context parallelism (generation always runs at CP=1: it has no CP).
# MODEL=tiny_hybrid: the same demo on a tiny Nemotron-H hybrid (Mamba-2, attention and MLP layers; conf/tiny_hybrid.sh).
# DEMO_MIN_EXACT (default 0.9): exit 1 when a smaller share of the held-out answers is exact after fine-tuning.
set -euo pipefail
EXAMPLES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_DIR="$(dirname "$EXAMPLES_DIR")"
WORK_DIR="${MLM_WORK_DIR:-/tmp/megatron_workspace}"
MODEL="${MODEL:-tiny}"
case "$MODEL" in
    tiny) KIND=qwen3 ;;
    tiny_hybrid) KIND=hybrid ;;
    *) echo "error: MODEL=$MODEL: the demo runs MODEL=tiny (default) or MODEL=tiny_hybrid" >&2; exit 2 ;;
esac
TINY="$WORK_DIR/$MODEL"
# A model this small runs fastest on one thread per process, and a busy machine does not stall it.
THREADS="${OMP_NUM_THREADS:-1}"
SECONDS=0

echo "== 1/4 build the tiny model and the task in $TINY"
python "$REPO_DIR/tools/make_embedded_default.py" build --out "$TINY" --kind "$KIND"

echo "== 2/4 held-out prompts, before fine-tuning"
CP=1 OMP_NUM_THREADS="$THREADS" MLM_WORK_DIR="$WORK_DIR" MLM_MODEL_CKPT="$TINY/hf" PROMPTS_PATH="$TINY/heldout.jsonl" \
    OUTPUT_PATH="$TINY/before.jsonl" MLM_EXTRA_ARGS="--max-new-tokens 8 ${MLM_EXTRA_ARGS:-}" \
    "$EXAMPLES_DIR/generate.sh" "$MODEL" > "$TINY/before.log" 2>&1 || { tail -n 40 "$TINY/before.log" >&2; exit 1; }
echo "answers written to $TINY/before.jsonl"

echo "== 3/4 fine-tune (OMP_NUM_THREADS=$THREADS)"
OMP_NUM_THREADS="$THREADS" MLM_WORK_DIR="$WORK_DIR" MLM_MODEL_SAVE="$TINY/sft" MLM_RESUME=0 SAVE_HF="${SAVE_HF:-final}" \
    "$EXAMPLES_DIR/finetune.sh" "$MODEL"

echo "== 4/4 held-out prompts, after fine-tuning"
CP=1 OMP_NUM_THREADS="$THREADS" MLM_WORK_DIR="$WORK_DIR" MLM_MODEL_CKPT="$TINY/sft" PROMPTS_PATH="$TINY/heldout.jsonl" \
    OUTPUT_PATH="$TINY/after.jsonl" MLM_EXTRA_ARGS="--max-new-tokens 8 ${MLM_EXTRA_ARGS:-}" \
    "$EXAMPLES_DIR/generate.sh" "$MODEL" > "$TINY/after.log" 2>&1 || { tail -n 40 "$TINY/after.log" >&2; exit 1; }

python "$REPO_DIR/tools/make_embedded_default.py" report --before "$TINY/before.jsonl" \
    --after "$TINY/after.jsonl" --min-exact "${DEMO_MIN_EXACT:-0.9}"
echo "demo done in ${SECONDS} s; fine-tuned checkpoint: $TINY/sft"
LAST="$TINY/sft/iter_$(printf %07d "$(cat "$TINY/sft/latest_checkpointed_iteration.txt")")"
if [ -d "$LAST/hf" ]; then
    echo "Hugging Face model (transformers, vLLM): $LAST/hf"
fi
