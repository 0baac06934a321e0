"""Tiny byte-level BPE tokenizers trained in-process, shaped like the real Qwen and Llama 3 ones.

Byte-level BPE means any text encodes (no unknown token); special tokens are appended after the
trained vocabulary, as in the real models, so their ids sit at the top of the tokenizer.
"""

from __future__ import annotations

import copy
import functools
import json
import random
from importlib import resources

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

FAMILIES: tuple[str, ...] = ("qwen3", "qwen3_untied", "llama3", "qwen2", "qwen3_moe", "nemotron_h", "nemotron_h_moe")

# Merges learned on top of the 256 byte symbols; with the specials, len(tokenizer) stays below the
# model's vocab_size (512), like real checkpoints whose embedding is padded past the tokenizer.
_BPE_VOCAB_SIZE = 440

# The split patterns the real tokenizers use; Qwen keeps digits single, Llama 3 groups up to three.
_WORDS_RE = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
_REST_RE = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN_SPLIT = _WORDS_RE + r"\p{N}" + _REST_RE
_LLAMA3_SPLIT = _WORDS_RE + r"\p{N}{1,3}" + _REST_RE

QWEN_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
)
LLAMA3_SPECIALS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|finetune_right_pad_id|>",
)

_WORDS = (
    "the a an and or but if then else of to in on at for with from by about as is are was were be been "
    "have has had do does did can could will would should may might must not no yes all any some many "
    "one two three four five first last next new old good bad big small long short high low right left "
    "i you he she it we they me him her us them my your our their this that these those what which who "
    "when where why how time day year people way thing man woman child world life hand part place case "
    "week number group problem fact question answer user assistant system tool model data text file list "
    "name value city weather today tomorrow paris london tokyo berlin search result function call code "
    "python json string error test train learn think reason step plan write read open close make find "
    "give take know see come go say tell ask work use try need want like feel help show keep let begin "
    "water food house road book music color red green blue light dark cold warm hot rain sun moon star"
).split()
_PUNCT = (".", ",", "!", "?", ":", ";", " -", "...")
_KEYS = ("name", "arguments", "city", "unit", "query", "id", "value", "items", "ok", "count")


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 12))]
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words)), str(rng.randint(0, 99999)))
    if rng.random() < 0.2:
        words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice(_PUNCT)


def _json_line(rng: random.Random) -> str:
    obj = {rng.choice(_KEYS): rng.choice((rng.choice(_WORDS), rng.randint(0, 999), True, None)) for _ in range(3)}
    return json.dumps(obj)


@functools.lru_cache(maxsize=None)
def _corpus(seed: int = 0) -> tuple[str, ...]:
    rng = random.Random(seed)
    lines = []
    for i in range(3000):
        text = _json_line(rng) if i % 5 == 0 else _sentence(rng)
        lines.append(text + ("\n\n" if i % 7 == 0 else "\n"))
    return tuple(lines)


def _is_qwen(family: str) -> bool:
    """Qwen's tokenizer kind (ChatML turns); the tiny Nemotron-H models use it too."""
    return family.startswith(("qwen", "nemotron"))


def check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny-model family {family!r}; expected one of {FAMILIES}")


@functools.lru_cache(maxsize=None)
def _trained_backend(kind: str) -> str:
    """Train once per kind ('qwen' or 'llama3') and return the tokenizer as JSON (immutable, cacheable)."""
    tok = Tokenizer(models.BPE())
    if kind == "qwen":
        # Real Qwen tokenizers NFC-normalise, and transformers' Qwen2Tokenizer rebuilds the pipeline with NFC
        # on load, so leaving it out would make the saved and the reloaded tokenizer disagree.
        tok.normalizer = normalizers.NFC()
    split = _QWEN_SPLIT if kind == "qwen" else _LLAMA3_SPLIT
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_BPE_VOCAB_SIZE,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    specials = QWEN_SPECIALS if kind == "qwen" else LLAMA3_SPECIALS
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok.to_str()


def chat_template_text(family: str) -> str:
    check_family(family)
    name = "llama3" if family == "llama3" else "qwen2" if family == "qwen2" else "qwen3"
    return resources.files("megatron_sft.tiny").joinpath("templates", f"{name}.jinja").read_text(encoding="utf-8")


def _special_token_kwargs(family: str) -> dict:
    if _is_qwen(family):
        extra = [s for s in QWEN_SPECIALS if s not in ("<|endoftext|>", "<|im_end|>")]
        # unk_token: what transformers' Qwen2Tokenizer assumes on reload; byte-level BPE never emits it.
        return dict(
            bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<|endoftext|>",
            extra_special_tokens=extra,
        )
    extra = [s for s in LLAMA3_SPECIALS if s not in ("<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>")]
    return dict(
        bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<|finetune_right_pad_id|>",
        extra_special_tokens=extra,
    )


@functools.lru_cache(maxsize=None)
def _cached_tokenizer(family: str) -> PreTrainedTokenizerFast:
    backend = Tokenizer.from_str(_trained_backend("qwen" if _is_qwen(family) else "llama3"))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=2048,
        padding_side="right",
        clean_up_tokenization_spaces=False,
        **_special_token_kwargs(family),
    )
    tok.chat_template = chat_template_text(family)
    return tok


def make_tiny_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """A fresh (caller-owned) tiny tokenizer for `family`, chat template set."""
    check_family(family)
    return copy.deepcopy(_cached_tokenizer(family))
