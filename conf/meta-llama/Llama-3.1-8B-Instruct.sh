# shellcheck shell=bash disable=SC2034  # sourced by conf/arguments.sh, which reads these variables
# meta-llama/Llama-3.1-8B-Instruct: Llama 3, 32 layers, hidden 4096, 32 attention heads in 8 KV groups, untied embeddings.
# Architecture flags as in its config.json (a flag that contradicts the checkpoint is an error at launch);
# vocab_size 128256 is divisible by --make-vocab-size-divisible-by x TP for the TP values the heads allow.
MODEL_ARGS=(
    --num-layers 32
    --hidden-size 4096
    --ffn-hidden-size 14336
    --num-attention-heads 32
    --group-query-attention
    --num-query-groups 8
    --kv-channels 128
    --max-position-embeddings 131072
    --position-embedding-type rope
    --rotary-base 500000
    --rotary-percent 1.0
    --use-rope-scaling
    --rope-scaling-factor 8.0
    --normalization RMSNorm
    --norm-epsilon 1e-05
    --swiglu
    --disable-bias-linear
    --untie-embeddings-and-output-weights
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
# 8B parameters: about 145 GB of weights, gradients and optimizer state; TP=4 on 80 GB GPUs.
CONF_TP=4
