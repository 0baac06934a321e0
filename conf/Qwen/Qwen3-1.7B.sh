# Qwen/Qwen3-1.7B: Qwen3, 28 layers, hidden 2048, 16 attention heads in 8 KV groups, tied embeddings. Architecture: its config.json.
# 1.7B parameters: about 31 GB of weights, gradients and optimizer state; one 80 GB GPU.
MODEL_ARGS=(--seq-length 4096 --bf16)
CONF_TP=1
