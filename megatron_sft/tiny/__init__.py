"""Tiny Hugging Face checkpoints and tokenizers (Qwen3, Qwen3-MoE, Qwen2.5, Llama 3) built locally for tests."""

from megatron_sft.tiny.models import make_tiny_model
from megatron_sft.tiny.tokenizer import FAMILIES, make_tiny_tokenizer

__all__ = ["FAMILIES", "make_tiny_model", "make_tiny_tokenizer"]
