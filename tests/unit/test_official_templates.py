"""Loss masks under the published Qwen3 and Llama 3.1 chat templates, token by token.

The published templates are not part of this repository, and the hub is not reachable on CI machines. The test
takes each template from $MEGATRON_SFT_OFFICIAL_TEMPLATES (a folder holding `qwen3.jinja` and `llama3.1.jinja`,
the `chat_template` of Qwen/Qwen3-0.6B and meta-llama/Llama-3.1-8B-Instruct), else from the Hugging Face hub or its
local cache (never the network: an unreachable hub costs minutes); without either it is skipped, saying so. The tiny tokenizers carry each family's special tokens.

The expected mask is found without this project's span finder: transformers renders the conversation, each
trained assistant turn is the text between its role header (counted from the start) and the next end-of-turn
token, and a token is in it when its first character is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from megatron_sft.data.pipeline import ChunkProcessor
from megatron_sft.data.sources import RawChunk
from megatron_sft.tiny import make_tiny_tokenizer

FAMILIES = {  # published template: (hub repo, tiny tokenizer, assistant header, end of turn)
    "qwen3": ("Qwen/Qwen3-0.6B", "qwen3", "<|im_start|>assistant\n", "<|im_end|>"),
    "llama3.1": ("meta-llama/Llama-3.1-8B-Instruct", "llama3", "<|start_header_id|>assistant<|end_header_id|>\n\n",
                 "<|eot_id|>"),
}

# A system prompt and 4 user/assistant turns; each answer's loss control, and the weight each setting expects.
ANSWERS = [  # (extra keys on the answer, its weight under --loss-turns all, under last)
    ({"weight": 0.5}, 0.5, 0.5),  # own weight: kept under last too
    ({"loss": False}, 0.0, 0.0),
    ({}, 1.0, 0.0),
    ({}, 1.0, 1.0),
]


def official_template(name: str) -> str:
    folder = os.environ.get("MEGATRON_SFT_OFFICIAL_TEMPLATES")
    if folder:
        return Path(folder, f"{name}.jinja").read_text()
    try:  # the local hub cache only: asking an unreachable hub costs minutes of retries
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(FAMILIES[name][0], "tokenizer_config.json", local_files_only=True)
    except Exception as e:  # noqa: BLE001 - not downloaded, gated or absent: say so
        pytest.skip(f"the published {name} template is not in the hub cache ({type(e).__name__}); download "
                    f"{FAMILIES[name][0]}, or set MEGATRON_SFT_OFFICIAL_TEMPLATES to a folder with qwen3.jinja and "
                    "llama3.1.jinja, to run this")
    return json.loads(Path(path).read_text())["chat_template"]


def conversation() -> list[dict]:
    messages = [{"role": "system", "content": "You reverse words."}]
    for k, (extra, _, _) in enumerate(ANSWERS, 1):
        messages.append({"role": "user", "content": f"reverse: word{k} and more"})
        messages.append({"role": "assistant", "content": f"{k}drow dna erom", **extra})
    return messages


def expected_weights(tok, template: str, header: str, end: str, weights: list[float]):
    """(token ids, per-token weight of the label at each position's token) from transformers' render."""
    plain = [{k: v for k, v in m.items() if k in ("role", "content")} for m in conversation()]
    text = tok.apply_chat_template(plain, chat_template=template, tokenize=False)
    spans, at = [], 0
    for weight in weights:
        at = text.index(header, at) + len(header)
        stop = text.index(end, at) + len(end)
        spans.append((at, stop, weight))
        at = stop
    assert text.find(header, at) < 0, "one span per assistant turn"
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    out = np.zeros(len(enc["input_ids"]), dtype=np.float32)
    for t, (first, _) in enumerate(enc["offset_mapping"]):
        out[t] = next((w for a, b, w in spans if a <= first < b), 0.0)
    return np.array(enc["input_ids"]), out, text


@pytest.mark.parametrize("loss_turns", ["all", "last"])
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_masks_under_the_published_template_token_by_token(name, loss_turns):
    _, family, header, end = FAMILIES[name]
    template = official_template(name)
    tok = make_tiny_tokenizer(family)
    weights = [all_w if loss_turns == "all" else last_w for _, all_w, last_w in ANSWERS]
    ids, expected, text = expected_weights(tok, template, header, end, weights)
    result = ChunkProcessor(tok, template, 4096, loss_turns=loss_turns)(
        RawChunk(0, "t.jsonl", False, [(1, {"messages": conversation()})]))
    assert result.tokens.tolist() == ids.tolist(), "the same tokens as transformers' render"
    got = result.supervised.astype(np.float32)
    wrong = [(t, tok.decode([int(ids[t])]), float(expected[t]), float(got[t])) for t in np.flatnonzero(got != expected)]
    assert not wrong, f"tokens whose weight differs (position, token, expected, got): {wrong[:10]}\n{text}"
    assert sorted(set(expected.tolist())) == sorted({0.0, *[w for w in weights]}), "every weight is seen"
