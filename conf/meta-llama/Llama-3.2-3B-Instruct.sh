# meta-llama/Llama-3.2-3B-Instruct: Llama 3, 28 layers, hidden 3072, 24 attention heads in 8 KV groups, tied embeddings. Architecture: its config.json.
# 3.2B parameters: about 58 GB of weights, gradients and optimizer state; TP=2 leaves room for activations.
MODEL_ARGS=(--seq-length 4096 --bf16)
MODEL_TRAIN_ARGS=(--sequence-parallel)  # finetune.sh only
CONF_TP=2
