# nvidia/NVIDIA-Nemotron-Nano-9B-v2: Nemotron-H hybrid, 56 layers (27 Mamba-2, 4 attention, 25 MLP:
# M-M-M-MM-M-M-M*-M-M-M*-M-M-M-M*-M-M-M-M*-M-MM-M-M-M-M-M-), hidden 4480, 40 attention heads in 8 KV groups,
# 128 Mamba heads of 80 in 8 groups, untied embeddings. Architecture: its config.json.
# About 9B parameters: about 160 GB of weights, gradients and optimizer state; TP=4 (+SP) x DP=2 on one node of
# 8 80-GB GPUs (heads 40 and 128, groups 8 and 8: TP 8 also divides them).
MODEL_ARGS=(--seq-length 4096 --bf16)
MODEL_TRAIN_ARGS=(--sequence-parallel)  # finetune.sh only
CONF_TP=4
