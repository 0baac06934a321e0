"""Parameter-efficient fine-tuning: LoRA adapters on Megatron-Core layers, their checkpoints and PEFT export."""
