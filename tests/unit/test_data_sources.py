"""Sources (JSONL, JSON, Parquet, save_to_disk, hub name), blending by weight, deterministic split."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from megatron_sft.data import DataConfig, build_sft_datasets
from megatron_sft.data.cache import PreparedData
from megatron_sft.data.prepare import build_cache
from megatron_sft.data.sources import parse_sources
from megatron_sft.errors import UserError
from megatron_sft.tiny import make_tiny_tokenizer


def records(n: int, tag: str = "r") -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"{tag} question {i}"},
                {"role": "assistant", "content": f"{tag} answer {i}"},
            ]
        }
        for i in range(n)
    ]


def write_jsonl(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return str(path)


def prepared(tmp_path, data_path, name="cache", **options) -> PreparedData:
    cfg = DataConfig(data_path=data_path, seq_length=128, num_workers=1, **{"split": "100,0,0", **options})
    build_cache(cfg, make_tiny_tokenizer("qwen3"), str(tmp_path / name), progress=False)
    return PreparedData(str(tmp_path / name))


def all_tokens(p: PreparedData) -> list[list[int]]:
    return [p.sample(i)[0].tolist() for i in range(len(p))]


def test_every_source_kind_gives_the_same_samples(tmp_path, monkeypatch):
    import datasets

    recs = records(5)
    reference = all_tokens(prepared(tmp_path, [write_jsonl(tmp_path / "d.jsonl", recs)], "jsonl"))
    assert len(reference) == 5
    (tmp_path / "d.json").write_text(json.dumps(recs, indent=2))
    datasets.Dataset.from_list(recs).to_parquet(str(tmp_path / "d.parquet"))
    datasets.Dataset.from_list(recs).save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(recs)}).save_to_disk(str(tmp_path / "saved_dict"))
    for spec in ("d.json", "d.parquet", "saved", "saved_dict"):
        assert all_tokens(prepared(tmp_path, [str(tmp_path / spec)], spec + ".cache")) == reference, spec
    # A hub name goes through datasets.load_dataset (stubbed here: no network in tests).
    calls = []
    monkeypatch.setattr(
        datasets, "load_dataset", lambda name, split: calls.append((name, split)) or datasets.Dataset.from_list(recs)
    )
    cfg = DataConfig(finetune_hf_dataset="someorg/chat-data", seq_length=128, split="100,0,0", num_workers=1)
    build_cache(cfg, make_tiny_tokenizer("qwen3"), str(tmp_path / "hub"), progress=False)
    assert calls == [("someorg/chat-data", "train")]
    assert all_tokens(PreparedData(str(tmp_path / "hub"))) == reference


def test_hub_loading_failure_is_one_clear_error(tmp_path, monkeypatch):
    import datasets

    def offline(name, split):
        raise ConnectionError("no network\ndetails")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    cfg = DataConfig(finetune_hf_dataset="org/missing", seq_length=64, num_workers=1)
    with pytest.raises(UserError, match=r"^--finetune-hf-dataset org/missing .*ConnectionError: no network;"):
        build_cache(cfg, make_tiny_tokenizer("qwen3"), str(tmp_path / "c"), progress=False)


def test_data_path_parsing():
    with pytest.raises(UserError, match="not found"):
        parse_sources(["missing/file.jsonl"], None)
    with pytest.raises(UserError, match="weighted form"):
        parse_sources(["0.5", "a.jsonl", "b.jsonl"], None)
    assert parse_sources(None, "org/name")[0].kind == "hub"


def test_blend_by_weight_repeats_and_leaves_out_and_reports(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", records(10, "a"))
    b = write_jsonl(tmp_path / "b.jsonl", records(30, "b"))
    p = prepared(tmp_path, ["0.5", a, "0.5", b])
    source = np.load(tmp_path / "cache" / "sample_source.npy")
    train = np.asarray(p.packs("train")[1])
    # 40 samples per epoch, half from each: a twice over, b 20 of its 30.
    assert len(train) == 40
    assert np.bincount(source[train]).tolist() == [20, 20]
    assert np.bincount(train[source[train] == 0]).tolist() == [2] * 10
    assert len(set(train[source[train] == 1].tolist())) == 20
    report = {r["source"]: r for r in p.meta["blend"]}
    assert report[a]["repeated_copies"] == 2 and report[b]["left_out_this_mix"] == 10


def test_split_is_deterministic_disjoint_and_complete(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", records(100))
    first = prepared(tmp_path, [path], "one", split="80,10,10", seed=7)
    again = prepared(tmp_path, [path], "two", split="80,10,10", seed=7)
    other = prepared(tmp_path, [path], "three", split="80,10,10", seed=8)
    parts = {s: sorted(np.asarray(first.packs(s)[1]).tolist()) for s in ("train", "valid", "test")}
    assert [len(parts[s]) for s in ("train", "valid", "test")] == [80, 10, 10]
    assert sorted(parts["train"] + parts["valid"] + parts["test"]) == list(range(100))
    assert parts["valid"] == sorted(np.asarray(again.packs("valid")[1]).tolist())
    assert parts["valid"] != sorted(np.asarray(other.packs("valid")[1]).tolist())


def test_empty_validation_split_skips_evaluation_with_one_notice(tmp_path, caplog):
    path = write_jsonl(tmp_path / "d.jsonl", records(6))
    cfg = DataConfig(
        data_path=[path], seq_length=128, split="100,0,0", data_cache_dir=str(tmp_path / "c"), num_workers=1
    )
    with caplog.at_level(logging.INFO):
        splits = build_sft_datasets(cfg, make_tiny_tokenizer("qwen3"), dp_rank=0, dp_size=1)
    assert splits.valid is None and splits.test is None
    notices = [r for r in caplog.records if "validation split is empty" in r.getMessage()]
    assert len(notices) == 1 and notices[0].levelno == logging.INFO
    assert next(iter(splits.train))["tokens"].shape == (1, 128)


def test_sft_dataset_standalone_with_a_dataloader(tmp_path):
    import pickle

    import torch

    from megatron_sft.data import SFTDataset

    path = write_jsonl(tmp_path / "d.jsonl", records(30))
    ds = SFTDataset(
        path, make_tiny_tokenizer("qwen3"), seq_length=64, context_parallel_size=2, cache_dir=str(tmp_path / "c")
    )
    assert ds.num_conversations == 30 and len(ds) >= 1
    clone = pickle.loads(pickle.dumps(ds))
    assert len(pickle.dumps(ds)) < 2000  # the arrays are re-opened, not copied
    assert torch.equal(clone[0]["tokens"], ds[0]["tokens"])
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=SFTDataset.collate)
    batch = next(iter(loader))
    assert batch["tokens"].shape == (2, 64) and isinstance(batch["cu_seqlens_padded"], list)
    assert all(((c[1:] - c[:-1]) % 4 == 0).all() for c in batch["cu_seqlens_padded"])  # 2 x CP
