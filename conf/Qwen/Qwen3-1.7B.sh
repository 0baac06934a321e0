# shellcheck shell=bash disable=SC2034  # sourced by conf/arguments.sh, which reads these variables
# Qwen/Qwen3-1.7B: Qwen3, 28 layers, hidden 2048, 16 attention heads in 8 KV groups, tied embeddings.
# Architecture flags as in its config.json (a flag that contradicts the checkpoint is an error at launch);
# vocab_size 151936 is divisible by --make-vocab-size-divisible-by x TP for the TP values the heads allow.
MODEL_ARGS=(
    --num-layers 28
    --hidden-size 2048
    --ffn-hidden-size 6144
    --num-attention-heads 16
    --group-query-attention
    --num-query-groups 8
    --kv-channels 128
    --max-position-embeddings 40960
    --position-embedding-type rope
    --rotary-base 1000000
    --rotary-percent 1.0
    --normalization RMSNorm
    --norm-epsilon 1e-06
    --swiglu
    --disable-bias-linear
    --qk-layernorm
    --make-vocab-size-divisible-by 1187
    --tokenizer-type HuggingFaceTokenizer
    --seq-length 4096
    --bf16
)
# Layout defaults for 80 GB GPUs (TP, PP, EP, ETP, CP or DP set in the environment wins):
# 1.7B parameters: about 31 GB of weights, gradients and optimizer state; one 80 GB GPU.
CONF_TP=1
