# Qwen/Qwen3-32B: Qwen3, 64 layers, hidden 5120, 64 attention heads in 8 KV groups, untied embeddings. Architecture: its config.json.
# 32.8B parameters: about 590 GB of weights, gradients and optimizer state; TP=8 x PP=2 (two nodes of 8 GPUs) with full recompute.
MODEL_ARGS=(--seq-length 4096 --bf16)
MODEL_TRAIN_ARGS=(--sequence-parallel --recompute-granularity full --recompute-method uniform --recompute-num-layers 1)  # finetune.sh only
CONF_TP=8 CONF_PP=2
