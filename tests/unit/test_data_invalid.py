"""Bad input: a one-line error naming file and line, or with --skip-invalid a skip that is counted.

Nothing invalid trains silently; nothing valid is lost.
"""

from __future__ import annotations

import json

import pytest

from megatron_sft.data.cache import PreparedData
from megatron_sft.config import DataConfig
from megatron_sft.data.prepare import build_cache
from megatron_sft.errors import UserError
from megatron_sft.tiny import make_tiny_tokenizer

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}

BAD_LINES = {
    "malformed_json": (b'{"messages": [', "malformed JSON"),
    "missing_messages": (json.dumps({"text": "hi"}).encode(), "no 'messages'"),
    "unknown_role": (json.dumps({"messages": [{"role": "robot", "content": "x"}]}).encode(), "unknown role 'robot'"),
    "non_string_content": (
        json.dumps({"messages": [{"role": "user", "content": ["x"]}, {"role": "assistant", "content": "y"}]}).encode(),
        "content must be a string",
    ),
    "empty_conversation": (json.dumps({"messages": []}).encode(), "empty conversation"),
    "invalid_utf8": (b'{"messages": [{"role": "user", "content": "caf\xe9"}]}', "invalid UTF-8"),
}


def build(tmp_path, files: dict[str, bytes], **options):
    tmp_path.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    cfg = DataConfig(data_path=paths, seq_length=256, split="100,0,0", num_workers=1, **options)
    out = tmp_path / "cache"
    meta = build_cache(cfg, make_tiny_tokenizer("qwen3"), str(out), progress=False)
    return meta, PreparedData(str(out))


def lines(*records) -> bytes:
    return b"\n".join(r if isinstance(r, bytes) else json.dumps(r).encode() for r in records) + b"\n"


@pytest.mark.parametrize("reason", sorted(BAD_LINES))
def test_bad_record_names_file_and_line_or_is_skipped_and_counted(tmp_path, reason):
    bad, message = BAD_LINES[reason]
    data = lines(GOOD, GOOD, bad, GOOD)  # the bad record is on line 3
    with pytest.raises(UserError) as err:
        build(tmp_path / "strict", {"d.jsonl": data})
    text = str(err.value)
    assert "d.jsonl:3: " in text and message in text and "--skip-invalid" in text and "\n" not in text
    meta, prepared = build(tmp_path, {"d.jsonl": data}, skip_invalid=True)
    stats = meta["stats"]
    assert stats["invalid_skipped"] == {reason: 1}
    assert stats["first_location"][reason].endswith("d.jsonl:3")
    assert stats["records_read"] == 4 and stats["samples_kept"] == 3 and len(prepared) == 3


def test_no_assistant_turn_is_dropped_and_counted_without_flag(tmp_path):
    no_assistant = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]}
    all_untrained = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "train": False}]
    }
    meta, prepared = build(tmp_path, {"d.jsonl": lines(GOOD, no_assistant, all_untrained, GOOD)})
    assert meta["stats"]["dropped"] == {"no_assistant_turn": 1, "no_supervised_turn": 1}
    assert meta["stats"]["samples_kept"] == 2 and len(prepared) == 2


def test_empty_file_is_an_error_or_counted(tmp_path):
    with pytest.raises(UserError, match=r"empty.jsonl: empty data file.*--skip-invalid"):
        build(tmp_path, {"empty.jsonl": b"", "d.jsonl": lines(GOOD)})
    meta, _ = build(tmp_path / "skip", {"empty.jsonl": b"\n", "d.jsonl": lines(GOOD)}, skip_invalid=True)
    assert meta["stats"]["invalid_skipped"] == {"empty_file": 1} and meta["stats"]["samples_kept"] == 1


def test_too_long_is_truncated_or_dropped_and_counted(tmp_path):
    long = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "word " * 400}]}
    long_prompt = {"messages": [{"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "x"}]}
    meta, prepared = build(tmp_path, {"d.jsonl": lines(GOOD, long, long_prompt)})
    # Truncation keeps the first 256 tokens; a prompt that fills them leaves nothing to train: dropped.
    assert meta["stats"]["truncated"] == 2 and meta["stats"]["dropped"] == {"no_supervised_tokens": 1}
    assert [len(prepared.sample(i)[0]) for i in range(len(prepared))][1] == 256
    meta, prepared = build(tmp_path / "drop", {"d.jsonl": lines(GOOD, long, long_prompt)}, drop_long_samples=True)
    assert meta["stats"]["dropped"] == {"too_long": 2} and meta["stats"]["truncated"] == 0 and len(prepared) == 1


def test_valid_records_all_arrive_in_order(tmp_path):
    tok = make_tiny_tokenizer("qwen3")
    records = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"answer {i}"}]}
        for i in range(7)
    ]
    _meta, prepared = build(tmp_path, {"d.jsonl": lines(records[0], b"not json", *records[1:])}, skip_invalid=True)
    texts = [tok.decode(prepared.sample(i)[0].tolist()) for i in range(len(prepared))]
    assert [f"answer {i}<|im_end|>" in t for i, t in enumerate(texts)] == [True] * 7
