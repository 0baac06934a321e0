# shellcheck shell=bash disable=SC2034  # sourced by conf/arguments.sh, which reads these variables
# Qwen/Qwen2.5-0.5B-Instruct: Qwen2.5, 24 layers, hidden 896, 14 attention heads in 2 KV groups, tied embeddings.
# Architecture flags as in its config.json (a flag that contradicts the checkpoint is an error at launch);
# vocab_size 151936 is divisible by --make-vocab-size-divisible-by x TP for the TP values the heads allow.
MODEL_ARGS=(
    --num-layers 24
    --hidden-size 896
    --ffn-hidden-size 4864
    --num-attention-heads 14
    --group-query-attention
    --num-query-groups 2
    --kv-channels 64
    --max-position-embeddings 32768
    --position-embedding-type rope
    --rotary-base 1000000
    --rotary-percent 1.0
    --normalization RMSNorm
    --norm-epsilon 1e-06
    --swiglu
    --disable-bias-linear
    --add-qkv-bias
    --make-vocab-size-divisible-by 1187
    --tokenizer-type HuggingFaceTokenizer
    --seq-length 4096
    --bf16
)
# Layout defaults for 80 GB GPUs (TP, PP, EP, ETP, CP or DP set in the environment wins):
# 0.5B parameters: one GPU. 2 KV heads: TP can be at most 2.
CONF_TP=1
