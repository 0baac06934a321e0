# shellcheck shell=bash disable=SC2034  # sourced by conf/arguments.sh, which reads these variables
# Qwen/Qwen3-8B: Qwen3, 36 layers, hidden 4096, 32 attention heads in 8 KV groups, untied embeddings.
# Architecture flags as in its config.json (a flag that contradicts the checkpoint is an error at launch);
# vocab_size 151936 is divisible by --make-vocab-size-divisible-by x TP for the TP values the heads allow.
MODEL_ARGS=(
    --num-layers 36
    --hidden-size 4096
    --ffn-hidden-size 12288
    --num-attention-heads 32
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
    --untie-embeddings-and-output-weights
    --make-vocab-size-divisible-by 1187
    --tokenizer-type HuggingFaceTokenizer
    --seq-length 4096
    --bf16
)
# finetune.sh only.
MODEL_TRAIN_ARGS=(
    --sequence-parallel
)
# Layout defaults for 80 GB GPUs (TP, PP, EP, ETP, CP or DP set in the environment wins):
# 8.2B parameters: about 148 GB of weights, gradients and optimizer state; TP=4 on 80 GB GPUs.
CONF_TP=4
