"""The embedded default: a character-level tokenizer, a tiny Qwen3 built on it, and a task it learns.

One token per character (printable ASCII and newline) plus Qwen's ChatML special tokens, so a
string of n letters is n tokens and a tiny model can learn to manipulate characters in minutes.
The model is an ordinary Hugging Face directory (Qwen3ForCausalLM, tokenizer.json, chat template)
that every entry point of this project, and transformers itself, loads. The task: reverse a string
of up to 6 letters, as chat samples, with held-out prompts never seen in training.
"""

from __future__ import annotations

import json
import os
import pathlib
import random

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

# ChatML, as Qwen2.5/Qwen3 render it, without a default system prompt or think blocks.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' -}}{% endif -%}"
)
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHARACTERS = "\n" + "".join(chr(c) for c in range(32, 127))

# Architecture of the embedded default (conf/tiny.sh repeats it as flags; a test keeps them equal).
TINY_CHAR_CONFIG = {
    "vocab_size": 128,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000,
    "tie_word_embeddings": True,
}


# The embedded hybrid (MODEL=tiny_hybrid): Nemotron-H's layer kinds at the same width. Its attention has no
# positional encoding; the Mamba layer before it gives the tokens their order.
TINY_HYBRID_CONFIG = {
    "vocab_size": 128,
    "hidden_size": 128,
    "hybrid_override_pattern": "M*M-*",
    "intermediate_size": 256,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "mamba_num_heads": 8,
    "mamba_head_dim": 32,
    "ssm_state_size": 16,
    "n_groups": 2,
    "conv_kernel": 4,
    "chunk_size": 32,
    "max_position_embeddings": 256,
    "layer_norm_epsilon": 1e-5,
    "tie_word_embeddings": False,  # transformers' NemotronH never ties
}
KINDS = ("qwen3", "hybrid")


def make_char_tokenizer():
    """A PreTrainedTokenizerFast: one id per character, ChatML specials after them, unknown chars -> <|endoftext|>."""
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(CHARACTERS)}
    vocab.update({s: len(CHARACTERS) + i for i, s in enumerate(SPECIALS)})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=TINY_CHAR_CONFIG["max_position_embeddings"],
        padding_side="right",
        clean_up_tokenization_spaces=False,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        extra_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


EMBEDDING_STD = 0.1


def _char_config(kind: str, tokenizer):
    from transformers import NemotronHConfig, Qwen3Config

    ids = dict(bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
               attention_dropout=0.0, initializer_range=0.02, dtype="float32")
    if kind == "hybrid":
        return NemotronHConfig(**TINY_HYBRID_CONFIG, use_mamba_kernels=False, **ids)
    cfg = dict(TINY_CHAR_CONFIG)
    theta = cfg.pop("rope_theta")
    return Qwen3Config(**cfg, rope_parameters={"rope_type": "default", "rope_theta": float(theta)},
                       attention_bias=False, hidden_act="silu", **ids)


def make_char_model(out_dir: str | os.PathLike, seed: int = 0, kind: str = "qwen3") -> pathlib.Path:
    """Write a randomly initialised tiny Qwen3 (or, kind "hybrid", Nemotron-H) with the character tokenizer to
    `out_dir` (fp32 safetensors)."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    if kind not in KINDS:
        raise ValueError(f"unknown embedded model kind {kind!r}; expected one of {KINDS}")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = make_char_tokenizer()
    if len(tokenizer) > TINY_CHAR_CONFIG["vocab_size"]:
        raise AssertionError(f"{len(tokenizer)} tokens do not fit vocab_size {TINY_CHAR_CONFIG['vocab_size']}")
    config = _char_config(kind, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config).to(torch.float32).eval()
        # Token embeddings at the scale of a trained model's. The (tied) output layer's logits span about
        # std * hidden_size after the final norm: 12.8 here, only 2.6 at initializer_range 0.02, which
        # caps how confident a model with a frozen base (LoRA) can ever be.
        torch.nn.init.normal_(model.get_input_embeddings().weight, std=EMBEDDING_STD)
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


TASK_ALPHABET = "abcdefghijklmnopqrstuvwxyz"
TASK_MAX_LEN = 6


def reversal_chat(word: str) -> list[dict]:
    return [{"role": "user", "content": f"reverse: {word}"}, {"role": "assistant", "content": word[::-1]}]


def reversal_words(n_train: int, n_heldout: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Training words (1-6 letters) and held-out words (3-6 letters, no palindromes) that training never sees."""
    rng = random.Random(seed)
    heldout: list[str] = []
    while len(heldout) < n_heldout:
        word = "".join(rng.choice(TASK_ALPHABET) for _ in range(rng.randint(3, TASK_MAX_LEN)))
        if word not in heldout and word != word[::-1]:  # a palindrome would be right by copying
            heldout.append(word)
    banned, train = set(heldout), []
    while len(train) < n_train:
        word = "".join(rng.choice(TASK_ALPHABET) for _ in range(rng.randint(1, TASK_MAX_LEN)))
        if word not in banned:
            train.append(word)
    return train, heldout


def _write_chats(path: pathlib.Path, words: list[str]) -> pathlib.Path:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"messages": reversal_chat(word)}) + "\n" for word in words)
    return path


def build_embedded_default(
    out_dir: str | os.PathLike, n_train: int = 4000, n_heldout: int = 50, seed: int = 0, kind: str = "qwen3"
) -> dict[str, pathlib.Path]:
    """Write hf/ (the model), train.jsonl and heldout.jsonl (prompts ending in the expected answer) to out_dir."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, heldout = reversal_words(n_train, n_heldout, seed)
    return {
        "hf": make_char_model(out / "hf", seed=seed, kind=kind),
        "train": _write_chats(out / "train.jsonl", train),
        "heldout": _write_chats(out / "heldout.jsonl", heldout),
    }
