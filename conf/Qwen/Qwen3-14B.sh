# Qwen/Qwen3-14B: Qwen3, 40 layers, hidden 5120, 40 attention heads in 8 KV groups, untied embeddings. Architecture: its config.json.
# 14.8B parameters: about 266 GB of weights, gradients and optimizer state; TP=8 (one node) with full recompute.
MODEL_ARGS=(--seq-length 4096 --bf16)
MODEL_TRAIN_ARGS=(--sequence-parallel --recompute-granularity full --recompute-method uniform --recompute-num-layers 1)  # finetune.sh only
CONF_TP=8
