"""MMLU data loading (CSV layout, Parquet), prompt format, sub-sampling, letter tokens and the report."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_sft.errors import UserError
from megatron_sft.inference.mmlu_data import Question, load_mmlu
from megatron_sft.inference.mmlu_prompts import build_prompt, letter_token_ids, subsample
from megatron_sft.inference.mmlu_report import CATEGORIES, format_table, summarize

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "mmlu_fixture"
SUBJECTS = ["abstract_algebra", "high_school_geography", "nutrition", "philosophy"]


def test_fixture_loads_in_the_original_csv_layout():
    test, dev = load_mmlu(str(FIXTURE))
    assert sorted(test) == sorted(dev) == SUBJECTS
    assert all(len(test[s]) == 4 and len(dev[s]) == 3 for s in SUBJECTS)
    q = test["philosophy"][3]
    assert q.question == 'Who wrote "Leviathan"?' and q.choices[0] == "Thomas Hobbes" and q.answer == "A"
    assert dev["high_school_geography"][1].question == "Which line of latitude is at 0 degrees?"


def test_parquet_layout_gives_the_same_questions(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    test, dev = load_mmlu(str(FIXTURE))
    for split, data in (("test", test), ("dev", dev)):
        rows = [{"question": q.question, "subject": q.subject, "choices": list(q.choices),
                 "answer": "ABCD".index(q.answer)} for s in SUBJECTS for q in data[s]]
        (tmp_path / "all").mkdir(exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "all" / f"{split}-00000-of-00001.parquet")
    # a snapshot of cais/mmlu also has per-subject folders: they must not double the questions
    (tmp_path / "philosophy").mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:1]), tmp_path / "philosophy" / "test-00000-of-00001.parquet")
    assert load_mmlu(str(tmp_path)) == (test, dev)


def test_missing_or_unusable_directory_is_one_line(tmp_path):
    for spec, expected in ((str(tmp_path / "nope"), "no such directory"), (str(tmp_path), "found neither")):
        with pytest.raises(UserError) as err:
            load_mmlu(spec)
        assert str(err.value).startswith(f"--mmlu-dataset {spec}: ") and expected in str(err.value)
        assert "\n" not in str(err.value)


def test_bad_csv_row_names_file_and_line(tmp_path):
    (tmp_path / "test").mkdir()
    bad = tmp_path / "test" / "anatomy_test.csv"
    bad.write_text("q1,a,b,c,d,A\nq2,a,b,c,d\n")
    with pytest.raises(UserError, match=rf"^{bad}:2: expected 6 columns"):
        load_mmlu(str(tmp_path))
    bad.write_text("q1,a,b,c,d,E\n")
    with pytest.raises(UserError, match=rf"^{bad}:1: answer must be one of A, B, C, D"):
        load_mmlu(str(tmp_path))


def test_prompt_format_is_the_standard_one():
    q = Question("high_school_geography", "Q?", ("w", "x", "y", "z"), "C")
    shot = Question("high_school_geography", "S?", ("1", "2", "3", "4"), "B")
    assert build_prompt(q, []) == (
        "The following are multiple choice questions (with answers) about high school geography.\n\n"
        "Q?\nA. w\nB. x\nC. y\nD. z\nAnswer:")
    assert build_prompt(q, [shot]) == (
        "The following are multiple choice questions (with answers) about high school geography.\n\n"
        "S?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n"
        "Q?\nA. w\nB. x\nC. y\nD. z\nAnswer:")


def test_subsample_is_deterministic_and_sized():
    first = subsample(100, 0.1, "anatomy", 1234)
    assert first == subsample(100, 0.1, "anatomy", 1234) and len(first) == 10 and first == sorted(first)
    assert first != subsample(100, 0.1, "virology", 1234)
    assert subsample(3, 0.01, "x", 0) and len(subsample(3, 0.01, "x", 0)) == 1
    assert subsample(7, 1.0, "x", 0) == list(range(7))
    with pytest.raises(UserError, match="--fraction"):
        subsample(7, 0.0, "x", 0)


def test_letter_tokens_prefer_single_spaced_letters(tiny_models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["qwen3"])
    ids = letter_token_ids(tok, leading_space=True)
    # the tiny tokenizer splits " A" into " " + "A", so the bare letters are the answer tokens
    assert tok.convert_ids_to_tokens(ids) == list("ABCD")

    class Spaced:
        def encode(self, text, add_special_tokens=False):
            return [100 + ord(text[-1])] if text.startswith(" ") else [ord(text)]

    assert letter_token_ids(Spaced(), leading_space=True) == [100 + ord(c) for c in "ABCD"]
    assert letter_token_ids(Spaced(), leading_space=False) == [ord(c) for c in "ABCD"]


def test_report_macro_and_micro_averages():
    predictions = {"anatomy": list("AAAA"), "virology": list("AB"), "philosophy": list("C")}
    answers = {"anatomy": list("AABB"), "virology": list("AB"), "philosophy": list("D")}
    report = summarize(predictions, answers)
    other = report["categories"]["other"]  # anatomy 2/4, virology 2/2
    assert other["micro"] == pytest.approx(4 / 6) and other["macro"] == pytest.approx(0.75)
    assert report["overall"]["micro"] == pytest.approx(4 / 7)
    assert report["overall"]["macro"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert report["subjects"]["anatomy"]["predictions"] == "AAAA"
    assert "ALL" in format_table(report)


def test_category_table_covers_the_57_subjects():
    assert len(CATEGORIES) == 57
    assert {c: sum(v == c for v in CATEGORIES.values()) for c in set(CATEGORIES.values())} == {
        "STEM": 18, "humanities": 13, "social sciences": 12, "other": 14}
