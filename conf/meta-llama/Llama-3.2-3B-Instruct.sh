# shellcheck shell=bash disable=SC2034  # sourced by conf/arguments.sh, which reads these variables
# meta-llama/Llama-3.2-3B-Instruct: Llama 3, 28 layers, hidden 3072, 24 attention heads in 8 KV groups, tied embeddings.
# Architecture flags as in its config.json (a flag that contradicts the checkpoint is an error at launch);
# vocab_size 128256 is divisible by --make-vocab-size-divisible-by x TP for the TP values the heads allow.
MODEL_ARGS=(
    --num-layers 28
    --hidden-size 3072
    --ffn-hidden-size 8192
    --num-attention-heads 24
    --group-query-attention
    --num-query-groups 8
    --kv-channels 128
    --max-position-embeddings 131072
    --position-embedding-type rope
    --rotary-base 500000
    --rotary-percent 1.0
    --use-rope-scaling
    --rope-scaling-factor 32.0
    --normalization RMSNorm
    --norm-epsilon 1e-05
    --swiglu
    --disable-bias-linear
    --make-vocab-size-divisible-by 1
    --tokenizer-type HuggingFaceTokenizer
    --seq-length 4096
    --bf16
)
# finetune.sh only.
MODEL_TRAIN_ARGS=(
    --sequence-parallel
)
# Layout defaults for 80 GB GPUs (TP, PP, EP, ETP, CP or DP set in the environment wins):
# 3.2B parameters: about 58 GB of weights, gradients and optimizer state; TP=2 leaves room for activations.
CONF_TP=2
