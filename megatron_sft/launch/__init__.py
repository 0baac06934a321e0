"""What examples/{finetune,generate,mmlu,convert}.sh run: environment variables -> one checked command line.

    python -m megatron_sft.launch finetune Qwen/Qwen3-0.6B      # what examples/finetune.sh does
    python -m megatron_sft.launch finetune --help               # every variable it reads

Each value comes from the environment, else from the model's conf (conf/<MODEL>.sh: CONF_<NAME>), else
from a default here; the settings block printed before launch shows which. The command is then parsed
and validated by the entry script's own parser (megatron_sft.arguments.parse_args), so a bad setting is
refused here, in well under a second, before torchrun or any model starts; what the Python entry points
check, the scripts check too, with the same words. Nothing here imports torch.
"""
