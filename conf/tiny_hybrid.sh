# tiny_hybrid: the embedded default as a Nemotron-H hybrid: Mamba-2, attention and MLP layers (M*M-*) at the embedded
# Qwen3's width (megatron_sft/tiny/charlevel.py). MODEL=tiny_hybrid examples/demo.sh builds it and runs it all.
# The same task, batch and schedule as conf/tiny.sh (1000 iterations: 0/50 -> 50/50 exact held-out answers, about
# 5.5 minutes on 2 CPU cores); only the model and its files differ.
source "$(dirname "${BASH_SOURCE[0]}")/tiny.sh"
CONF_HF_MODEL_CKPT="$MLM_WORK_DIR/tiny_hybrid/hf"
CONF_DATASET="$MLM_WORK_DIR/tiny_hybrid/train.jsonl"
