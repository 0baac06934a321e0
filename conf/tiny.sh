# tiny: the embedded default. A 2-layer Qwen3 with a character-level tokenizer that learns to reverse strings of up
# to 6 letters in a few minutes on a CPU (megatron_sft/tiny/charlevel.py). examples/demo.sh builds it and runs it all.
MODEL_ARGS=(--seq-length 128)
CONF_HF_MODEL_CKPT="$MLM_WORK_DIR/tiny/hf"
CONF_DATASET="$MLM_WORK_DIR/tiny/train.jsonl"
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
# examples/dpo.sh tiny (examples/demo_dpo.sh runs it): the embedded preference task, "pick: 372 815" -> the larger
# number (megatron_sft/tiny/preference.py), from the fine-tuned demo model. 3 epochs of 1960 pairs, 368 iterations
# (under a minute on 2 CPU cores): held-out preference accuracy 45% -> 100%, reversal answers kept at 50/50; 1 epoch
# gave 94%. The rate the demo's own fine-tuning ended at, not DPO's usual 5e-7: the model is tiny and the rule new.
CONF_DPO_DATASET="$MLM_WORK_DIR/tiny/prefs.jsonl"
CONF_DPO_MLM_DATA_ARGS="--train-epochs 3 --split 98,2,0"
CONF_DPO_MLM_OPTIM_ARGS="--lr 3e-4 --min-lr 0 --lr-decay-style cosine --lr-warmup-fraction 0.05 --weight-decay 0.0 --adam-beta2 0.98 --clip-grad 1.0"
CONF_DPO_MLM_TRAIN_ARGS="--micro-batch-size 8 --global-batch-size 16"
CONF_DPO_MLM_EVAL_ARGS="--eval-interval 100 --eval-iters 2 --save-interval 1000 --log-interval 50"
