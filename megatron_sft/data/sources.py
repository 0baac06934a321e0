"""Where records come from: JSONL, JSON, Parquet, a `datasets` save_to_disk folder, or a hub dataset name.

Readers stream fixed-size chunks so memory does not grow with the data. JSONL lines travel as raw
bytes and are decoded by the workers, so UTF-8 and JSON errors are found in parallel and still name
the file and line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

from megatron_sft.data.formats import InvalidRecord
from megatron_sft.errors import UserError

_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


@dataclass(frozen=True)
class Source:
    spec: str  # a path, or a hub dataset name
    kind: str  # jsonl | json | parquet | saved | hub
    weight: float | None = None  # None: no blending, every record is used once per epoch
    hf_split: str = "train"


@dataclass
class RawChunk:
    """Up to `chunk_size` consecutive records of one source: (line or row number, bytes or dict)."""

    source: int
    label: str
    is_lines: bool
    items: list

    def where(self, n: int) -> str:
        return f"{self.label}:{n}" if self.is_lines else f"{self.label} (row {n})"


def parse_sources(data_path: list[str] | None, hf_dataset: str | None, hf_split: str = "train") -> list[Source]:
    """Megatron-style `--data-path [W1] P1 [W2] P2 ...` (weights optional), or `--finetune-hf-dataset NAME`."""
    tokens = [t for item in (data_path or []) for t in str(item).split()]
    if tokens and hf_dataset:
        raise UserError("give either --data-path or --finetune-hf-dataset, not both")
    if hf_dataset:
        return [Source(hf_dataset, detect_kind(hf_dataset), None, hf_split)]
    if not tokens:
        raise UserError("no data: give --data-path FILE [FILE ...] or --finetune-hf-dataset NAME")
    if _is_number(tokens[0]):
        if len(tokens) % 2 or not all(_is_number(w) for w in tokens[0::2]):
            raise UserError(f"--data-path {' '.join(tokens)}: weighted form is 'W1 PATH1 W2 PATH2 ...'")
        pairs = [(float(w), p) for w, p in zip(tokens[0::2], tokens[1::2])]
    else:
        return [Source(p, detect_kind(p), None, hf_split) for p in tokens]
    if any(w < 0 for w, _ in pairs) or sum(w for w, _ in pairs) <= 0:
        raise UserError(f"--data-path weights must be >= 0 with a positive sum, got {[w for w, _ in pairs]}")
    return [Source(p, detect_kind(p), w, hf_split) for w, p in pairs]


def detect_kind(spec: str) -> str:
    if os.path.isdir(spec):
        if any(os.path.exists(os.path.join(spec, m)) for m in _SAVED_MARKERS):
            return "saved"
        raise UserError(f"{spec} is a folder but not one written by datasets' save_to_disk; give its files instead")
    if os.path.isfile(spec):
        lower = spec.lower()
        if lower.endswith(".parquet"):
            return "parquet"
        if lower.endswith(".json") and _first_char(spec) == "[":
            return "json"
        return "jsonl"  # .jsonl, .ndjson, and .json files holding one object per line
    if spec.count("/") <= 1 and not spec.startswith((".", "/", "~")) and "." not in os.path.basename(spec):
        return "hub"
    raise UserError(f"data file {spec} not found (and it does not look like a hub dataset name 'org/name')")


def fingerprint(source: Source) -> dict:
    """What identifies the source's content for the cache key: paths with sizes and mtimes."""
    if source.kind == "hub":
        return {"hub": source.spec, "split": source.hf_split}
    paths = [source.spec]
    if os.path.isdir(source.spec):
        paths = sorted(os.path.join(d, f) for d, _, files in os.walk(source.spec) for f in files)
    files = []
    for p in paths:
        st = os.stat(p)
        files.append([os.path.abspath(p), st.st_size, st.st_mtime_ns])
    return {"kind": source.kind, "files": files, "split": source.hf_split}


def iter_chunks(sources: list[Source], chunk_size: int, limit: int | None = None, on_empty=None) -> Iterator[RawChunk]:
    """All records of all sources, in order, in chunks; `limit` caps the records read per source.

    A source with no record at all calls `on_empty(source)` (which raises, or counts and returns).
    """
    readers = {"jsonl": _jsonl, "json": _json_array, "parquet": _parquet, "saved": _datasets, "hub": _datasets}
    for index, source in enumerate(sources):
        items: list = []
        count = 0
        for n, item in readers[source.kind](source):
            if limit is not None and count >= limit:
                break
            count += 1
            items.append((n, item))
            if len(items) == chunk_size:
                yield RawChunk(index, source.spec, source.kind == "jsonl", items)
                items = []
        if items:
            yield RawChunk(index, source.spec, source.kind == "jsonl", items)
        if count == 0 and on_empty is not None:
            on_empty(source)


def decode_line(chunk: RawChunk, n: int, raw: bytes):
    """One JSONL line -> object; raises InvalidRecord naming file:line."""
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as e:
        raise InvalidRecord(chunk.where(n), f"invalid UTF-8 at byte {e.start} of the line", "invalid_utf8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidRecord(chunk.where(n), f"malformed JSON: {e.msg} at column {e.colno}", "malformed_json") from None


def _jsonl(source: Source) -> Iterator[tuple[int, bytes]]:
    with open(source.spec, "rb") as f:
        for n, line in enumerate(f, start=1):
            if line.strip():  # blank lines (a trailing newline, say) hold no record
                yield n, line


def _json_array(source: Source) -> Iterator[tuple[int, dict]]:
    with open(source.spec, "rb") as f:
        raw = f.read()
    try:
        records = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise UserError(
            f"{source.spec}:{line}: invalid UTF-8; fix it, or convert the file to JSONL so that "
            "--skip-invalid can skip single records"
        ) from None
    except json.JSONDecodeError as e:
        raise UserError(
            f"{source.spec}:{e.lineno}: malformed JSON ({e.msg}); fix it, or convert the file to "
            "JSONL so that --skip-invalid can skip single records"
        ) from None
    if not isinstance(records, list):
        raise UserError(f"{source.spec}: a .json data file must hold a list of records; use JSONL for one per line")
    yield from enumerate(records, start=1)


def _parquet(source: Source) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    n = 0
    for batch in pq.ParquetFile(source.spec).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            n += 1
            yield n, row


def _datasets(source: Source) -> Iterator[tuple[int, dict]]:
    import datasets

    if source.kind == "saved":
        ds = datasets.load_from_disk(source.spec)
    else:
        try:
            ds = datasets.load_dataset(source.spec, split=source.hf_split)
        except Exception as e:  # noqa: BLE001 - network, auth, unknown name: all end the run the same way
            raise UserError(
                f"--finetune-hf-dataset {source.spec} (split {source.hf_split!r}) could not be loaded: "
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; check the name, or give a local file"
            ) from None
    if isinstance(ds, datasets.DatasetDict):
        if source.hf_split not in ds:
            raise UserError(f"{source.spec} has splits {list(ds)}, not {source.hf_split!r}; pick one")
        ds = ds[source.hf_split]
    n = 0
    for start in range(0, len(ds), 1024):
        batch = ds[start : start + 1024]
        columns = list(batch)
        for i in range(len(batch[columns[0]]) if columns else 0):
            n += 1
            yield n, {c: batch[c][i] for c in columns}


def _first_char(path: str) -> str:
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    return head[:1].decode("latin-1")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
