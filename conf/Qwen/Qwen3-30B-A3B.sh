# Qwen/Qwen3-30B-A3B: Qwen3-MoE, 48 layers, hidden 2048, 32 attention heads in 4 KV groups, untied embeddings,
# 128 experts (top-8) in every layer. Architecture: its config.json.
# 30.5B parameters, 29B of them in 128 experts: EP=8 x PP=2 puts 8 experts of 24 layers on each of 16 GPUs
# (two nodes of 8); the attention and embeddings are replicated over DP=8 with the distributed optimizer.
# Megatron choices, not the checkpoint's: all-to-all token dispatch, fp32 router.
MODEL_ARGS=(--moe-router-dtype fp32 --moe-token-dispatcher-type alltoall --seq-length 4096 --bf16)
MODEL_TRAIN_ARGS=(--recompute-granularity full --recompute-method uniform --recompute-num-layers 1)  # finetune.sh only
CONF_TP=1 CONF_PP=2 CONF_DP=8 CONF_EP=8 CONF_ETP=1
