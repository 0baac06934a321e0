# Qwen/Qwen3-0.6B: Qwen3, 28 layers, hidden 1024, 16 attention heads in 8 KV groups, tied embeddings. Architecture: its config.json.
# 0.6B parameters: about 11 GB of weights, gradients and Adam state in bf16 with fp32 master weights; one GPU.
MODEL_ARGS=(--seq-length 4096 --bf16)
CONF_TP=1
