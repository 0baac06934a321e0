# meta-llama/Llama-3.1-8B-Instruct: Llama 3, 32 layers, hidden 4096, 32 attention heads in 8 KV groups, untied embeddings. Architecture: its config.json.
# 8B parameters: about 145 GB of weights, gradients and optimizer state; TP=4 on 80 GB GPUs.
MODEL_ARGS=(--seq-length 4096 --bf16)
MODEL_TRAIN_ARGS=(--sequence-parallel)  # finetune.sh only
CONF_TP=4
