# nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B (the -BF16 repository): Nemotron-H hybrid MoE, 52 layers (23 Mamba-2, 6
# attention, 23 MoE: MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME), hidden 2688, 32 attention heads in 2 KV
# groups, 64 Mamba heads of 64 in 8 groups, 128 routed experts (top-6, sigmoid router with expert bias, scaling 2.5)
# and one shared expert per MoE layer, untied embeddings. Architecture: its config.json.
# About 32B parameters, 29B of them in experts: EP=8 puts 16 experts of every MoE layer on each of 8 GPUs, the rest
# is replicated over DP=8 with the distributed optimizer (full fine-tuning: about 85 GB per GPU by this count, so on
# 80-GB GPUs add a second node with PP=2, or train PEFT=lora on one).
# Megatron choices, not the checkpoint's: all-to-all token dispatch, fp32 router.
MODEL_ARGS=(--moe-router-dtype fp32 --moe-token-dispatcher-type alltoall --seq-length 4096 --bf16)
MODEL_TRAIN_ARGS=(--recompute-granularity full --recompute-method uniform --recompute-num-layers 1)  # finetune.sh only
CONF_TP=1 CONF_DP=8 CONF_EP=8 CONF_ETP=1
