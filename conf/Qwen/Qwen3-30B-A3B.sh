# shellcheck shell=bash disable=SC2034  # sourced by conf/arguments.sh, which reads these variables
# Qwen/Qwen3-30B-A3B: Qwen3-MoE, 48 layers, hidden 2048, 32 attention heads in 4 KV groups, untied embeddings,
# 128 experts (top-8) in every layer.
# Architecture flags as in its config.json (a flag that contradicts the checkpoint is an error at launch);
# vocab_size 151936 is divisible by --make-vocab-size-divisible-by x TP for the TP values the heads allow.
MODEL_ARGS=(
    --num-layers 48
    --hidden-size 2048
    --ffn-hidden-size 6144
    --num-attention-heads 32
    --group-query-attention
    --num-query-groups 4
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
    --num-experts 128
    --moe-ffn-hidden-size 768
    --moe-router-topk 8
    --moe-router-load-balancing-type aux_loss
    --moe-aux-loss-coeff 1e-3
    --moe-router-dtype fp32
    --moe-token-dispatcher-type alltoall
    --make-vocab-size-divisible-by 1187
    --tokenizer-type HuggingFaceTokenizer
    --seq-length 4096
    --bf16
)
# finetune.sh only.
MODEL_TRAIN_ARGS=(
    --recompute-granularity full
    --recompute-method uniform
    --recompute-num-layers 1
)
# Layout defaults for 80 GB GPUs (TP, PP, EP, ETP, CP or DP set in the environment wins):
# 30.5B parameters, 29B of them in 128 experts: EP=8 x PP=2 puts 8 experts of 24 layers on each of 16 GPUs
# (two nodes of 8); the attention and embeddings are replicated over DP=8 with the distributed optimizer.
CONF_TP=1
CONF_PP=2
CONF_DP=8
CONF_EP=8
CONF_ETP=1
