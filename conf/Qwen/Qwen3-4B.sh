# Qwen/Qwen3-4B: Qwen3, 36 layers, hidden 2560, 32 attention heads in 8 KV groups, tied embeddings. Architecture: its config.json.
# 4B parameters: about 72 GB of weights, gradients and optimizer state; TP=2 leaves room for activations.
MODEL_ARGS=(--seq-length 4096 --bf16)
MODEL_TRAIN_ARGS=(--sequence-parallel)  # finetune.sh only
CONF_TP=2
