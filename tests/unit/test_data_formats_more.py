"""Dolly, OpenOrca, prompt/completion and input/output records, --data-format, and PATH:N subsets.

Expected texts are written out from the record and the tiny templates' documented behaviour (Qwen3:
ChatML with an empty think block on the final assistant turn; Llama 3: headers and <|eot_id|>).
"""

from __future__ import annotations

import json
import logging
import re

import pytest

from megatron_sft.data import cache
from megatron_sft.config import DataConfig
from megatron_sft.data.formats import InvalidRecord, detect_format, to_conversation
from megatron_sft.data.prepare import build_cache
from megatron_sft.data.render import ChatRenderer
from megatron_sft.data.sources import parse_sources
from megatron_sft.errors import UserError
from megatron_sft.tiny import make_tiny_tokenizer
from tests.unit.test_data_render import EOT, IM_END, loss_runs

THINK = "<think>\n\n</think>\n\n"  # what Qwen3's template puts before the final answer

DOLLY = {
    "instruction": "Summarize the text.",
    "context": "Cats sleep sixteen hours a day.",
    "response": "Cats sleep a lot.",
    "category": "summarization",
}
OPENORCA = {"id": "niv.42", "system_prompt": "Be brief.", "question": "What is 2+2?", "response": "4"}
PROMPT_COMPLETION = {"prompt": "The capital of France is", "completion": "Paris."}
INPUT_OUTPUT = {"input": "Translate to English: chat", "output": "cat"}


# -- supervised text per format -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "record, user, answer",
    [
        (DOLLY, "Summarize the text.\n\nCats sleep sixteen hours a day.", "Cats sleep a lot."),
        ({**DOLLY, "context": ""}, "Summarize the text.", "Cats sleep a lot."),
        (OPENORCA, "What is 2+2?", "4"),
        (PROMPT_COMPLETION, "The capital of France is", "Paris."),
        (INPUT_OUTPUT, "Translate to English: chat", "cat"),
    ],
)
def test_supervised_text_of_each_new_format(record, user, answer):
    assert loss_runs("qwen3", record)[0] == [THINK + answer + IM_END]
    assert loss_runs("qwen3", record, unmask_user=True)[0] == [user + IM_END, THINK + answer + IM_END]
    assert loss_runs("llama3", record, unmask_user=True)[0] == [user + EOT, answer + EOT]


def test_system_turns_rendered_when_present_and_non_empty():
    renderer = ChatRenderer(make_tiny_tokenizer("qwen3"))

    def text(record):
        return renderer.render(to_conversation(record, "x:1"), "x:1").text

    assert text(OPENORCA) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n4<|im_end|>\n"
    )
    assert text({**OPENORCA, "system_prompt": ""}) == (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n4<|im_end|>\n"
    )
    assert text({**INPUT_OUTPUT, "system": "Translate."}).startswith("<|im_start|>system\nTranslate.<|im_end|>\n")
    for record in (DOLLY, PROMPT_COMPLETION, INPUT_OUTPUT):
        assert to_conversation(record, "x:1").train == [False, True]  # user, assistant; no system turn


# -- detection --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "record, fmt",
    [
        ({"instruction": "i", "input": "x", "output": "o"}, "alpaca"),
        ({"instruction": "i", "output": "o"}, "alpaca"),
        (INPUT_OUTPUT, "input_output"),
        ({"instruction": None, "input": "x", "output": "o"}, "input_output"),  # a null column counts as absent
        (DOLLY, "dolly"),
        (OPENORCA, "openorca"),
        (PROMPT_COMPLETION, "prompt_completion"),
        ({"messages": [], "prompt": "p", "completion": "c"}, "messages"),  # chat fields win, as before
        ({"conversations": [], "input": "x", "output": "o"}, "sharegpt"),
    ],
)
def test_detection(record, fmt):
    assert detect_format(record, "x:1") == fmt


def test_ambiguous_or_unknown_records_are_one_line_errors():
    with pytest.raises(InvalidRecord) as err:
        to_conversation({"instruction": "i", "output": "o", "response": "r"}, "f.jsonl:4")
    assert err.value.reason == "ambiguous_format"
    assert str(err.value).startswith(
        "f.jsonl:4: fields fit several formats (alpaca, dolly); pick one with --data-format"
    )
    with pytest.raises(InvalidRecord) as err:
        to_conversation({"text": "hi", "question": "q"}, "f.jsonl:5")
    assert err.value.reason == "missing_messages" and "\n" not in str(err.value)
    assert str(err.value).startswith("f.jsonl:5: no 'messages' (or ShareGPT 'conversations', Alpaca")
    assert "keys: question, text" in str(err.value)


# -- --data-format ----------------------------------------------------------------------------------
def test_forced_format_reads_its_fields_only():
    alpaca = {"instruction": "Ignore me.", "input": "Translate: chat", "output": "cat"}
    conv = to_conversation(alpaca, "x:1", data_format="input_output")
    assert conv.messages == [{"role": "user", "content": "Translate: chat"}, {"role": "assistant", "content": "cat"}]
    conv = to_conversation({"question": "q", "response": "r", "system": "s"}, "x:1", data_format="openorca")
    assert conv.messages == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}]


def test_forced_format_missing_field_names_file_line_and_field():
    with pytest.raises(InvalidRecord) as err:
        to_conversation({"instruction": "i", "output": "o"}, "f.jsonl:3", data_format="dolly")
    assert err.value.reason == "missing_fields"
    assert str(err.value) == (
        "f.jsonl:3: --data-format dolly needs 'instruction' and 'response'; missing 'response' "
        "(keys: instruction, output); fix the record or pass --skip-invalid to skip and count such records"
    )
    with pytest.raises(
        InvalidRecord, match=r"^f.jsonl:3: .*missing 'prompt', 'completion' \(keys: none; null: prompt\)"
    ):
        to_conversation({"prompt": None}, "f.jsonl:3", data_format="prompt_completion")


def test_forced_format_error_through_the_pipeline(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(DOLLY) + "\n" + json.dumps({"instruction": "i", "context": ""}) + "\n")
    cfg = DataConfig(data_path=[str(path)], seq_length=128, split="100,0,0", num_workers=1, data_format="dolly")
    with pytest.raises(UserError) as err:
        build_cache(cfg, make_tiny_tokenizer("qwen3"), str(tmp_path / "c"), progress=False)
    assert f"{path}:2: --data-format dolly needs" in str(err.value) and "missing 'response'" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="--data-format 'orca' is not one of auto, messages"):
        DataConfig(data_path=[str(path)], data_format="orca").validate()


@pytest.mark.parametrize(
    "record, message",
    [
        ({"prompt": ["a"], "completion": "b"}, "'prompt' must be a string, got list"),
        ({"input": "a", "output": 1}, "'output' must be a string, got int"),
        ({**OPENORCA, "system_prompt": 5}, "'system_prompt' must be a string, got int"),
        ({**DOLLY, "context": {"a": 1}}, "'context' must be a string, got dict"),
    ],
)
def test_non_string_fields(record, message):
    with pytest.raises(InvalidRecord) as err:
        to_conversation(record, "f.jsonl:7")
    assert err.value.reason == "non_string_content" and str(err.value).startswith(f"f.jsonl:7: {message};")


# -- PATH:N subsets ---------------------------------------------------------------------------------
def write_records(path, n: int) -> str:
    path.write_text(
        "".join(json.dumps({"prompt": f"question {i}", "completion": f"answer {i}"}) + "\n" for i in range(n))
    )
    return str(path)


def chosen(meta_dir) -> list[int]:
    """Which records (by their number in the text) the cache holds."""
    p = cache.PreparedData(str(meta_dir))
    tok = make_tiny_tokenizer("qwen3")
    return sorted(int(re.search(r"question (\d+)", tok.decode(p.sample(i)[0])).group(1)) for i in range(len(p)))


def subset_cfg(tmp_path, spec: str, seed: int = 1234) -> DataConfig:
    return DataConfig(
        data_path=[spec], seq_length=128, split="100,0,0", seed=seed, num_workers=1, data_cache_dir=str(tmp_path / "c")
    )


def test_subset_counts_seed_and_cache_key(tmp_path):
    path = write_records(tmp_path / "d.jsonl", 20)
    tok = make_tiny_tokenizer("qwen3")
    first = cache.prepare(subset_cfg(tmp_path, f"{path}:7"), tok, progress=False)
    source = first.meta["sources"][0]
    assert (source["spec"], source["subset"], source["records_read"], source["records_selected"]) == (path, 7, 20, 7)
    assert first.meta["stats"]["records_read"] == 7 and first.meta["splits"]["train"]["conversations"] == 7
    picked = chosen(first.path)
    assert len(picked) == 7 and picked != list(range(7))  # a seeded draw, not the head of the file
    build_cache(subset_cfg(tmp_path, f"{path}:7"), tok, str(tmp_path / "again"), progress=False)
    build_cache(subset_cfg(tmp_path, f"{path}:7", seed=99), tok, str(tmp_path / "other"), progress=False)
    assert chosen(tmp_path / "again") == picked
    assert chosen(tmp_path / "other") != picked
    keys = {cache.cache_key(subset_cfg(tmp_path, spec), tok)[0] for spec in (path, f"{path}:7", f"{path}:8")}
    assert len(keys) == 3


def test_subset_larger_than_the_source_uses_all_with_one_warning(tmp_path, caplog):
    path = write_records(tmp_path / "d.jsonl", 5)
    with caplog.at_level(logging.WARNING):
        meta = build_cache(
            subset_cfg(tmp_path, f"{path}:50"), make_tiny_tokenizer("qwen3"), str(tmp_path / "o"), progress=False
        )
    assert chosen(tmp_path / "o") == list(range(5))
    assert (meta["sources"][0]["records_read"], meta["sources"][0]["records_selected"]) == (5, 5)
    notes = [r.getMessage() for r in caplog.records if "using all of them" in r.getMessage()]
    assert notes == [f"data: {path}:50: the source has only 5 records; using all of them"]


def test_subset_is_the_same_for_every_source_kind(tmp_path, monkeypatch):
    import datasets

    recs = [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(30)]
    tok = make_tiny_tokenizer("qwen3")
    reference = None
    (tmp_path / "d.json").write_text(json.dumps(recs))
    datasets.Dataset.from_list(recs).to_parquet(str(tmp_path / "d.parquet"))
    datasets.Dataset.from_list(recs).save_to_disk(str(tmp_path / "saved"))
    write_records(tmp_path / "d.jsonl", 30)
    for name in ("d.jsonl", "d.json", "d.parquet", "saved"):
        build_cache(subset_cfg(tmp_path, f"{tmp_path / name}:6"), tok, str(tmp_path / f"{name}.c"), progress=False)
        reference = reference or chosen(tmp_path / f"{name}.c")
        assert chosen(tmp_path / f"{name}.c") == reference and len(reference) == 6, name
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: datasets.Dataset.from_list(recs))
    cfg = DataConfig(finetune_hf_dataset="org/chat-data:6", seq_length=128, split="100,0,0", num_workers=1)
    meta = build_cache(cfg, tok, str(tmp_path / "hub"), progress=False)
    assert chosen(tmp_path / "hub") == reference and meta["sources"][0]["spec"] == "org/chat-data"


def test_subset_spec_parsing(tmp_path):
    path = write_records(tmp_path / "d.jsonl", 3)
    colon = write_records(tmp_path / "e.jsonl:3", 3)  # an existing file whose name ends in ':3'
    assert [(s.spec, s.subset) for s in parse_sources([f"{path}:2", colon], None)] == [(path, 2), (colon, None)]
    weighted = parse_sources(["0.3", f"{path}:2", "0.7", path], None)
    assert [(s.spec, s.weight, s.subset) for s in weighted] == [(path, 0.3, 2), (path, 0.7, None)]
    hub = parse_sources(None, "teknium/OpenHermes-2.5:100")[0]
    assert (hub.spec, hub.kind, hub.subset) == ("teknium/OpenHermes-2.5", "hub", 100)
    assert parse_sources(["org/name:5"], None)[0].subset == 5
    with pytest.raises(UserError, match=r"^--data-path .*d\.jsonl:0: a subset PATH:N needs N >= 1 records"):
        parse_sources([f"{path}:0"], None)
    with pytest.raises(UserError, match="not found"):
        parse_sources([f"{tmp_path / 'missing.jsonl'}:5"], None)
