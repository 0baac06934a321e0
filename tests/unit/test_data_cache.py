"""The prepared-data cache: reuse, key, one builder under a lock, metadata, parallel = serial."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import multiprocessing as mp
import os
import threading

import pytest

from megatron_sft.data import cache
from megatron_sft.config import DataConfig
from megatron_sft.errors import UserError
from megatron_sft.tiny import make_tiny_tokenizer


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "d.jsonl"
    recs = [
        {
            "messages": [
                {"role": "user", "content": f"question {i}"},
                {"role": "assistant", "content": "answer " * (i % 20 + 1), "reasoning_content": "thinking " * (i % 3)},
            ]
        }
        for i in range(1500)
    ]
    recs += [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "long " * 200}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return DataConfig(
        data_path=[str(path)], seq_length=128, split="90,10,0", data_cache_dir=str(tmp_path / "c"), num_workers=1
    )


def test_reuse_and_what_changes_the_key(data, monkeypatch, tmp_path):
    tok = make_tiny_tokenizer("qwen3")
    first = cache.prepare(data, tok, progress=False)
    monkeypatch.setattr(cache, "build_cache", lambda *a, **k: pytest.fail("rebuilt a cache that exists"))
    assert cache.prepare(data, tok, progress=False).path == first.path
    assert cache.prepare(dataclasses.replace(data, num_workers=2), tok, progress=False).path == first.path
    key = cache.cache_key(data, tok)[0]
    tok(["a b c"], padding="max_length", max_length=16, truncation=True)  # changes the backend's state
    assert cache.cache_key(data, tok)[0] == key
    template = tmp_path / "t.jinja"
    template.write_text(tok.chat_template + " ")
    for change in (
        {"seq_length": 256},
        {"context_parallel_size": 2},
        {"unmask_user": True},
        {"drop_long_samples": True},
        {"skip_invalid": True},
        {"split": "80,20,0"},
        {"seed": 1},
        {"eod_mask_loss": True},
        {"packing_algorithm": "first_fit_decreasing"},
        {"sample_limit": 5},
        {"data_format": "messages"},
        {"max_sample_length": 64},
        {"chat_template": str(template)},
    ):
        assert cache.cache_key(dataclasses.replace(data, **change), tok)[0] != key, change
    assert cache.cache_key(data, make_tiny_tokenizer("llama3"))[0] != key
    with open(data.data_path[0], "a") as f:
        f.write(
            json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}) + "\n"
        )
    assert cache.cache_key(data, tok)[0] != key  # the data file changed


def test_metadata_reports_everything(data):
    meta = cache.prepare(data, make_tiny_tokenizer("qwen3"), progress=False).meta
    stats = meta["stats"]
    assert stats["records_read"] == 1501 and stats["samples_kept"] == 1501 and stats["truncated"] == 1
    assert stats["template_dropped_content"] == {}  # single-turn: the final reasoning is rendered
    assert stats["tokens"] == meta["splits"]["train"]["tokens"] + meta["splits"]["valid"]["tokens"]
    assert 0 < stats["supervised_tokens"] < stats["tokens"]
    assert sum(stats["length_histogram"].values()) == 1501 and "<=128" in stats["length_histogram"]
    assert meta["splits"]["train"]["conversations"] == 1351 and meta["splits"]["valid"]["conversations"] == 150
    assert meta["splits"]["train"]["fill"] > 0.9
    assert meta["template"]["end_of_turn"] == "<|im_end|>"
    assert "truncated" in stats["explain"]


def test_parallel_workers_give_identical_arrays(data, tmp_path, monkeypatch):
    from megatron_sft.data import workers

    monkeypatch.setattr(workers, "MIN_CORES_FOR_WORKERS", 0)  # real worker processes even on 2 cores
    tok = make_tiny_tokenizer("qwen3")
    serial = cache.prepare(data, tok, progress=False)
    parallel = cache.prepare(
        dataclasses.replace(data, num_workers=2, data_cache_dir=str(tmp_path / "p")), tok, progress=False
    )
    for name in ("tokens.bin", "supervised.bin", "sample_offsets.npy", "packs_train_samples.npy"):
        with open(os.path.join(serial.path, name), "rb") as a, open(os.path.join(parallel.path, name), "rb") as b:
            assert a.read() == b.read(), name


def _race(cfg, is_builder, log_path):
    def counting_build(*args, **kwargs):
        with open(log_path, "a") as f:
            f.write("build\n")
        return real_build(*args, **kwargs)

    real_build = cache.build_cache
    cache.build_cache = counting_build
    cache.prepare(cfg, make_tiny_tokenizer("qwen3"), is_builder=is_builder, progress=False, poll_s=0.05)


def test_one_build_under_the_lock_others_wait(data, tmp_path):
    make_tiny_tokenizer("qwen3")  # trained once here, inherited by the forked processes
    log_path = tmp_path / "builds.txt"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_race, args=(data, b, str(log_path))) for b in (False, True, True, False)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert log_path.read_text() == "build\n"
    assert len(cache.prepare(data, make_tiny_tokenizer("qwen3"), is_builder=False)) == 1501


def test_waiters_see_a_failed_build(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    cfg = DataConfig(data_path=[str(bad)], seq_length=64, data_cache_dir=str(tmp_path / "c"), num_workers=1)
    with pytest.raises(UserError, match="bad.jsonl:1"):
        cache.prepare(cfg, make_tiny_tokenizer("qwen3"), progress=False)
    key = cache.cache_key(cfg, make_tiny_tokenizer("qwen3"))[0]
    os.utime(os.path.join(cfg.data_cache_dir, key + ".failed"))
    with pytest.raises(UserError, match="build on local rank 0 failed.*bad.jsonl:1"):
        cache.prepare(cfg, make_tiny_tokenizer("qwen3"), is_builder=False, poll_s=0.01)


def test_max_sample_length_caps_conversations_below_the_pack_length(data):
    """Packs stay 128 tokens; conversations over 40 tokens are cut to 40 (or dropped with --drop-long-samples)."""
    import numpy as np

    tok = make_tiny_tokenizer("qwen3")
    whole = cache.prepare(data, tok, progress=False)  # capped at --seq-length only
    lengths = np.diff(whole.offsets)
    over = int((lengths > 40).sum())
    assert 0 < over < len(lengths)
    cut = cache.prepare(dataclasses.replace(data, max_sample_length=40), tok, progress=False)
    assert cut.meta["stats"]["truncated"] == over  # the one already cut at 128 included
    assert np.array_equal(np.diff(cut.offsets), np.minimum(lengths, 40))
    assert cut.meta["config"]["seq_length"] == 128 and cut.meta["config"]["max_sample_length"] == 40
    dropped = cache.prepare(dataclasses.replace(data, max_sample_length=40, drop_long_samples=True), tok,
                            progress=False)
    assert dropped.meta["stats"]["samples_kept"] == len(lengths) - over
    with pytest.raises(UserError, match="--max-sample-length"):
        dataclasses.replace(data, max_sample_length=256).validate()


def _packs(prepared) -> dict:
    out = {}
    for split in ("train", "valid"):
        offsets, samples = prepared.packs(split)
        out[split] = (offsets.tolist(), samples.tolist())
    out["tokens"] = prepared.tokens.tolist()
    out["supervised"] = prepared.supervised.tolist()
    return out


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_a_damaged_cache_is_rebuilt_with_a_notice_and_gives_the_same_packs(data, caplog, damage):
    tok = make_tiny_tokenizer("qwen3")
    first = cache.prepare(data, tok, progress=False)
    before = _packs(first)
    tokens = os.path.join(first.path, "tokens.bin")
    del first
    raw = bytearray(open(tokens, "rb").read())
    if damage == "truncate":
        raw = raw[: len(raw) // 2 + 1]  # not even a whole uint32 at the end
    elif damage == "flip":
        raw[len(raw) // 3] ^= 0xFF  # same size, other contents
    if damage == "delete":
        os.remove(tokens)
    else:
        with open(tokens, "wb") as f:
            f.write(raw)
    with caplog.at_level("WARNING"):
        again = cache.prepare(data, tok, progress=False)
    [notice] = [r.getMessage() for r in caplog.records if "rebuilding the cache" in r.getMessage()]
    assert tokens in notice
    assert _packs(again) == before


def test_a_build_by_another_process_is_waited_for_with_a_notice(data, caplog):
    tok = make_tiny_tokenizer("qwen3")
    key = cache.cache_key(data, tok)[0]
    lock = os.path.join(data.cache_root, key) + ".lock"
    os.makedirs(data.cache_root, exist_ok=True)
    holder = open(lock, "w")
    fcntl.flock(holder, fcntl.LOCK_EX)
    threading.Timer(1.0, lambda: (fcntl.flock(holder, fcntl.LOCK_UN), holder.close())).start()
    with caplog.at_level("INFO"):
        prepared = cache.prepare(data, tok, progress=False)
    assert any("another process is building" in r.getMessage() for r in caplog.records)
    assert len(prepared) > 0


def test_a_killed_builds_staging_is_removed_by_the_next_build(data, caplog):
    """A build killed before its rename leaves `<key>.tmpPID`; the next builder (holding the lock) removes it."""
    tok = make_tiny_tokenizer("qwen3")
    key = cache.cache_key(data, tok)[0]
    left = os.path.join(data.cache_root, key) + ".tmp999999"
    os.makedirs(os.path.join(left, "partial"))
    with caplog.at_level("INFO"):
        prepared = cache.prepare(data, tok, progress=False)
    assert len(prepared) > 0 and not os.path.exists(left)
    assert any(left in r.getMessage() and "interrupted build" in r.getMessage() for r in caplog.records)
    assert sorted(os.listdir(data.cache_root)) == sorted([key, key + ".lock"])


def test_weights_after_the_first_chunk_are_kept_and_earlier_tokens_get_their_flags(data, tmp_path):
    """loss_weight.bin appears with the first weighted record (past the first chunk of 512): the samples before
    it read as 0/1 weights, the weighted one carries its weight, and supervised.bin stays the 0/1 flags."""
    import numpy as np

    tok = make_tiny_tokenizer("qwen3")
    plain = cache.prepare(data, tok, progress=False)
    assert not plain.weighted and not plain.meta["weighted"]
    lines = open(data.data_path[0]).read().splitlines()
    record = json.loads(lines[700])
    record["messages"][1]["weight"] = 0.5
    lines[700] = json.dumps(record)
    path = tmp_path / "w.jsonl"
    path.write_text("\n".join(lines) + "\n")
    weighted = cache.prepare(dataclasses.replace(data, data_path=[str(path)]), tok, progress=False)
    assert weighted.weighted and weighted.meta["weighted"]
    assert len(weighted) == len(plain)
    for i in range(len(plain)):
        ids, flags = plain.sample(i)
        w_ids, weights = weighted.sample(i)
        assert (ids == w_ids).all() and weights.dtype == np.float32
        expected = flags * (0.5 if i == 700 else 1.0)
        assert (weights == expected).all(), i
        assert (weighted.supervised[weighted.offsets[i]:weighted.offsets[i + 1]] == flags).all()
