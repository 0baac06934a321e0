# Qwen/Qwen3-8B: Qwen3, 36 layers, hidden 4096, 32 attention heads in 8 KV groups, untied embeddings. Architecture: its config.json.
# 8.2B parameters: about 148 GB of weights, gradients and optimizer state; TP=4 on 80 GB GPUs.
MODEL_ARGS=(--seq-length 4096 --bf16)
MODEL_TRAIN_ARGS=(--sequence-parallel)  # finetune.sh only
CONF_TP=4
