# meta-llama/Llama-3.2-1B-Instruct: Llama 3, 16 layers, hidden 2048, 32 attention heads in 8 KV groups, tied embeddings. Architecture: its config.json.
# 1.2B parameters: about 22 GB of weights, gradients and optimizer state; one GPU.
MODEL_ARGS=(--seq-length 4096 --bf16)
CONF_TP=1
