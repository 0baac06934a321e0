# Qwen/Qwen2.5-0.5B-Instruct: Qwen2.5, 24 layers, hidden 896, 14 attention heads in 2 KV groups, tied embeddings. Architecture: its config.json.
# 0.5B parameters: one GPU. 2 KV heads: TP can be at most 2.
MODEL_ARGS=(--seq-length 4096 --bf16)
CONF_TP=1
