"""MMLU questions from --mmlu-dataset: a local directory (original CSV layout or Parquet) or a Hub name.

Original layout (Hendrycks et al.): dev/<subject>_dev.csv and test/<subject>_test.csv, no header,
columns question, A, B, C, D, answer letter. Parquet (as `cais/mmlu` stores it): files whose names
contain "test" / "dev", columns question, choices (4 strings), answer (0-3), and subject (else the
file's folder names the subject). A Hub name is read through `datasets` (and its cache).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from megatron_sft.errors import UserError

LETTERS = "ABCD"
Split = dict[str, list["Question"]]  # subject -> questions, in file order


@dataclass(frozen=True)
class Question:
    subject: str
    question: str
    choices: tuple[str, str, str, str]
    answer: str  # "A".."D"


def _looks_local(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~")) or Path(spec).expanduser().exists()


def check_mmlu_source(spec: str) -> None:
    """Fail early (before any model loads) on a local path that is not there."""
    if _looks_local(spec) and not Path(spec).expanduser().is_dir():
        raise UserError(f"--mmlu-dataset {spec}: no such directory; give a directory with dev/ and test/ CSV files "
                        "(or Parquet files), or a Hugging Face dataset name such as cais/mmlu")


def load_mmlu(spec: str) -> tuple[Split, Split]:
    """(test, dev) questions by subject."""
    check_mmlu_source(spec)
    if not _looks_local(spec):
        return _load_hub(spec)
    root = Path(spec).expanduser()
    if (root / "test").is_dir() and any((root / "test").glob("*_test.csv")):
        return _read_csv_split(root / "test", "_test.csv"), _read_csv_split(root / "dev", "_dev.csv")
    # A snapshot of cais/mmlu holds every question twice: in all/ and in the per-subject folders.
    parquet = sorted((root / "all").glob("*.parquet")) or sorted(root.rglob("*.parquet"))
    if parquet:
        return _read_parquet(parquet, "test"), _read_parquet(parquet, "dev")
    raise UserError(f"--mmlu-dataset {spec}: found neither test/<subject>_test.csv files nor *.parquet files")


def _read_csv_split(folder: Path, suffix: str) -> Split:
    split: Split = {}
    for path in sorted(folder.glob(f"*{suffix}")) if folder.is_dir() else []:
        subject = path.name[: -len(suffix)]
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            split[subject] = [_from_row(row, subject, f"{path}:{reader.line_num}") for row in reader if row]
    return split


def _from_row(row: list[str], subject: str, where: str) -> Question:
    if len(row) != 6:
        raise UserError(f"{where}: expected 6 columns (question, A, B, C, D, answer), found {len(row)}")
    answer = row[5].strip().upper()
    if answer not in LETTERS:
        raise UserError(f"{where}: answer must be one of A, B, C, D; found {row[5]!r}")
    return Question(subject, row[0], (row[1], row[2], row[3], row[4]), answer)


def _from_record(record: dict, subject: str, where: str) -> Question:
    choices, answer = list(record["choices"]), record["answer"]
    if len(choices) != 4:
        raise UserError(f"{where}: expected 4 choices, found {len(choices)}")
    if isinstance(answer, str):
        answer = LETTERS.index(answer.strip().upper()) if answer.strip().upper() in LETTERS else answer
    if not isinstance(answer, int) or not 0 <= answer < 4:
        raise UserError(f"{where}: answer must be 0-3 (or A-D); found {answer!r}")
    return Question(record.get("subject") or subject, record["question"], tuple(choices), LETTERS[answer])


def _group(questions: list[Question]) -> Split:
    split: Split = defaultdict(list)
    for q in questions:
        split[q.subject].append(q)
    return dict(sorted(split.items()))


def _read_parquet(files: list[Path], split_name: str) -> Split:
    import pyarrow.parquet as pq

    questions = []
    for path in files:
        if split_name not in path.name:
            continue
        table = pq.read_table(path).to_pylist()
        missing = {"question", "choices", "answer"} - set(table[0] if table else {})
        if table and missing:
            raise UserError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        questions += [_from_record(r, path.parent.name, f"{path} row {i}") for i, r in enumerate(table)]
    return _group(questions)


def _load_hub(name: str) -> tuple[Split, Split]:
    import datasets

    splits = []
    for split in ("test", "dev"):
        try:
            records = datasets.load_dataset(name, "all", split=split)
        except Exception as err:  # noqa: BLE001 - offline, unknown name, no config: one message for all
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise UserError(f"--mmlu-dataset {name}: cannot load split {split!r} through datasets ({first}); "
                            "give a local directory with the CSV or Parquet files instead") from None
        splits.append(_group([_from_record(r, "", f"{name}[{split}] row {i}") for i, r in enumerate(records)]))
    return splits[0], splits[1]
