# shellcheck shell=bash disable=SC2034  # sourced by conf/arguments.sh, which reads these variables
# Qwen/Qwen2.5-7B-Instruct: Qwen2.5, 28 layers, hidden 3584, 28 attention heads in 4 KV groups, untied embeddings.
# Architecture flags as in its config.json (a flag that contradicts the checkpoint is an error at launch);
# vocab_size 152064 is divisible by --make-vocab-size-divisible-by x TP for the TP values the heads allow.
MODEL_ARGS=(
    --num-layers 28
    --hidden-size 3584
    --ffn-hidden-size 18944
    --num-attention-heads 28
    --group-query-attention
    --num-query-groups 4
    --kv-channels 128
    --max-position-embeddings 32768
    --position-embedding-type rope
    --rotary-base 1000000
    --rotary-percent 1.0
    --normalization RMSNorm
    --norm-epsilon 1e-06
    --swiglu
    --disable-bias-linear
    --add-qkv-bias
    --untie-embeddings-and-output-weights
    --make-vocab-size-divisible-by 128
    --tokenizer-type HuggingFaceTokenizer
    --seq-length 4096
    --bf16
)
# finetune.sh only.
MODEL_TRAIN_ARGS=(
    --sequence-parallel
)
# Layout defaults for 80 GB GPUs (TP, PP, EP, ETP, CP or DP set in the environment wins):
# 7.6B parameters: about 137 GB of weights, gradients and optimizer state; TP=4 (4 KV heads: at most 4).
CONF_TP=4
