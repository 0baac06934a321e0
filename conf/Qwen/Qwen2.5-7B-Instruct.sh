# Qwen/Qwen2.5-7B-Instruct: Qwen2.5, 28 layers, hidden 3584, 28 attention heads in 4 KV groups, untied embeddings. Architecture: its config.json.
# 7.6B parameters: about 137 GB of weights, gradients and optimizer state; TP=4 (4 KV heads: at most 4).
MODEL_ARGS=(--seq-length 4096 --bf16)
MODEL_TRAIN_ARGS=(--sequence-parallel)  # finetune.sh only
CONF_TP=4
