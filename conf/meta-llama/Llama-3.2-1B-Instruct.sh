# shellcheck shell=bash disable=SC2034  # sourced by conf/arguments.sh, which reads these variables
# meta-llama/Llama-3.2-1B-Instruct: Llama 3, 16 layers, hidden 2048, 32 attention heads in 8 KV groups, tied embeddings.
# Architecture flags as in its config.json (a flag that contradicts the checkpoint is an error at launch);
# vocab_size 128256 is divisible by --make-vocab-size-divisible-by x TP for the TP values the heads allow.
MODEL_ARGS=(
    --num-layers 16
    --hidden-size 2048
    --ffn-hidden-size 8192
    --num-attention-heads 32
    --group-query-attention
    --num-query-groups 8
    --kv-channels 64
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
# Layout defaults for 80 GB GPUs (TP, PP, EP, ETP, CP or DP set in the environment wins):
# 1.2B parameters: about 22 GB of weights, gradients and optimizer state; one GPU.
CONF_TP=1
