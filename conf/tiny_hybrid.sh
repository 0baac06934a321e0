# tiny_hybrid: the embedded default as a Nemotron-H hybrid: Mamba-2, attention and MLP layers (M*M-*) at the
# embedded Qwen3's width (megatron_sft/tiny/charlevel.py). MODEL=tiny_hybrid examples/demo.sh builds it and runs it all.
MODEL_ARGS=(--seq-length 128)
CONF_HF_MODEL_CKPT="$MLM_WORK_DIR/tiny_hybrid/hf"
CONF_DATASET="$MLM_WORK_DIR/tiny_hybrid/train.jsonl"
# 1000 iterations of 16 packed rows (about 2 minutes on 2 CPU cores): 100% exact held-out answers; 600 gave 96%.
# High learning rate: the task is small and the model starts from random weights.
CONF_MLM_DATA_ARGS="--train-iters 1000 --split 98,2,0"
CONF_MLM_OPTIM_ARGS="--lr 3e-3 --min-lr 3e-4 --lr-decay-style cosine --lr-warmup-fraction 0.05 --weight-decay 0.0 --adam-beta2 0.98"
CONF_MLM_TRAIN_ARGS="--micro-batch-size 8 --global-batch-size 16"
CONF_MLM_EVAL_ARGS="--eval-interval 100 --eval-iters 2 --save-interval 1000 --log-interval 50"
# PEFT=lora: rank-32 adapters on the frozen random model need a higher learning rate and more steps.
CONF_LORA_RANK=32 CONF_LORA_ALPHA=64
CONF_LORA_MLM_DATA_ARGS="--train-iters 1500 --split 98,2,0"
CONF_LORA_MLM_OPTIM_ARGS="--lr 6e-3 --min-lr 6e-4 --lr-decay-style cosine --lr-warmup-fraction 0.05 --weight-decay 0.0 --adam-beta2 0.98"
