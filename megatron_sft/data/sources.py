"""Where records come from: JSONL, JSON, Parquet, a `datasets` save_to_disk folder, or a hub dataset name.

Readers stream fixed-size chunks so memory does not grow with the data. JSONL lines travel as raw
bytes and are decoded by the workers, so UTF-8 and JSON errors are found in parallel and still name
the file and line.

A spec `PATH:N` (or `org/name:N`) takes a subset of N records of that source, drawn with the seed.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from megatron_sft.config import is_number
from megatron_sft.data.formats import InvalidRecord
from megatron_sft.data.mixture import subset_indices
from megatron_sft.errors import UserError

log = logging.getLogger(__name__)
_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_SUBSET = re.compile(r"(.+):(-?\d+)")
# A Hugging Face repo id: 'name' or 'org/name', letters, digits, '-', '_', '.'.
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


@dataclass(frozen=True)
class Source:
    spec: str  # a path, or a hub dataset name
    kind: str  # jsonl | json | parquet | saved | hub
    weight: float | None = None  # None: no blending, every record is used once per epoch
    hf_split: str = "train"
    subset: int | None = None  # `PATH:N`: N records drawn with the seed; None: all of them


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
        return [_source(hf_dataset, None, hf_split, "--finetune-hf-dataset")]
    if not tokens:
        raise UserError("no data: give --data-path FILE [FILE ...] or --finetune-hf-dataset NAME")
    if is_number(tokens[0]):
        if len(tokens) % 2 or not all(is_number(w) for w in tokens[0::2]):
            raise UserError(f"--data-path {' '.join(tokens)}: weighted form is 'W1 PATH1 W2 PATH2 ...'")
        pairs = [(float(w), p) for w, p in zip(tokens[0::2], tokens[1::2])]
    else:
        return [_source(p, None, hf_split, "--data-path") for p in tokens]
    if any(w < 0 for w, _ in pairs) or sum(w for w, _ in pairs) <= 0:
        raise UserError(f"--data-path weights must be >= 0 with a positive sum, got {[w for w, _ in pairs]}")
    return [_source(p, w, hf_split, "--data-path") for w, p in pairs]


def _source(spec: str, weight: float | None, hf_split: str, flag: str) -> Source:
    explicit_hub = flag == "--finetune-hf-dataset"
    path, subset = split_subset(spec, flag, explicit_hub)
    return Source(path, detect_kind(path, explicit_hub), weight, hf_split, subset)


def split_subset(spec: str, flag: str, explicit_hub: bool = False) -> tuple[str, int | None]:
    """'PATH:N' -> (PATH, N); anything else -> (spec, None).

    Only when PATH exists (or names a hub dataset) and `spec` itself is not a file: a file whose name
    ends in ':3' is still that file.
    """
    match = _SUBSET.fullmatch(spec)
    if match is None or os.path.exists(spec):
        return spec, None
    path, n = match.group(1), int(match.group(2))
    if not (os.path.exists(path) or _is_hub_name(path, explicit_hub)):
        return spec, None
    if n < 1:
        raise UserError(f"{flag} {spec}: a subset PATH:N needs N >= 1 records; drop ':{n}' to use all")
    return path, n


def _is_hub_name(spec: str, explicit: bool) -> bool:
    if _HUB_NAME.fullmatch(spec) is None or ".." in spec:
        return False
    # In --data-path a dotted name is far more likely a missing file (data.jsonl) than a hub dataset.
    return explicit or "." not in os.path.basename(spec)


def detect_kind(spec: str, explicit_hub: bool = False) -> str:
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
    if _is_hub_name(spec, explicit_hub):
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


def iter_chunks(
    sources: list[Source],
    chunk_size: int,
    limit: int | None = None,
    on_empty=None,
    *,
    seed: int = 0,
    counts: list[dict] | None = None,
) -> Iterator[RawChunk]:
    """All records of all sources (or of their seeded subsets), in order, in chunks.

    `limit` caps the records passed on per source. A source with no record at all calls
    `on_empty(source)` (which raises, or counts and returns). Per source, `counts` receives the
    records read and the records selected (passed on).
    """
    readers = {"jsonl": _jsonl, "json": _json_array, "parquet": _parquet, "saved": _datasets, "hub": _datasets}
    for index, source in enumerate(sources):
        tally = {"records_read": None, "records_selected": 0}
        pick = _subset_picker(source, index, seed, tally) if source.subset else None
        items: list = []
        count = 0
        for n, item in readers[source.kind](source, pick):
            if limit is not None and count >= limit:
                break
            count += 1
            items.append((n, item))
            if len(items) == chunk_size:
                yield RawChunk(index, source.spec, source.kind == "jsonl", items)
                items = []
        if items:
            yield RawChunk(index, source.spec, source.kind == "jsonl", items)
        tally["records_selected"] = count
        if tally["records_read"] is None:  # no subset: what was selected is what was read
            tally["records_read"] = count
        if counts is not None:
            counts.append(tally)
        if count == 0 and on_empty is not None:
            on_empty(source)


Picker = Callable[[int], np.ndarray]


def _subset_picker(source: Source, index: int, seed: int, tally: dict) -> Picker:
    """Given the number of records in the source, the sorted positions of its subset."""

    def pick(total: int) -> np.ndarray:
        tally["records_read"] = total
        if source.subset > total:
            log.warning(
                "data: %s:%d: the source has only %d records; using all of them", source.spec, source.subset, total
            )
        return subset_indices(total, source.subset, seed, index)

    return pick


def _kept(items: Iterable, keep: np.ndarray | None) -> Iterator:
    """The items at the 0-based positions in `keep` (sorted), stopping after the last; all if keep is None."""
    if keep is None:
        yield from items
        return
    wanted = iter(keep.tolist())
    target = next(wanted, None)
    if target is None:
        return
    for i, item in enumerate(items):
        if i == target:
            yield item
            target = next(wanted, None)
            if target is None:  # the rest of the source need not be read
                return


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


def _jsonl(source: Source, pick: Picker | None) -> Iterator[tuple[int, bytes]]:
    keep = pick(_count_lines(source.spec)) if pick else None
    with open(source.spec, "rb") as f:
        # Blank lines (a trailing newline, say) hold no record.
        yield from _kept(((n, line) for n, line in enumerate(f, start=1) if line.strip()), keep)


def _count_lines(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _json_array(source: Source, pick: Picker | None) -> Iterator[tuple[int, dict]]:
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
    yield from _kept(enumerate(records, start=1), pick(len(records)) if pick else None)


def _parquet(source: Source, pick: Picker | None) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    table = pq.ParquetFile(source.spec)
    keep = pick(table.metadata.num_rows) if pick else None
    rows = (row for batch in table.iter_batches(batch_size=1024) for row in batch.to_pylist())
    yield from _kept(enumerate(rows, start=1), keep)


def _datasets(source: Source, pick: Picker | None) -> Iterator[tuple[int, dict]]:
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
    numbers = range(1, len(ds) + 1)
    if pick is not None:  # select the rows instead of converting all of them
        keep = pick(len(ds))
        ds, numbers = ds.select(keep), (keep + 1).tolist()
    for start in range(0, len(ds), 1024):
        batch = ds[start : start + 1024]
        columns = list(batch)
        for i in range(len(batch[columns[0]]) if columns else 0):
            yield numbers[start + i], {c: batch[c][i] for c in columns}


def _first_char(path: str) -> str:
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    return head[:1].decode("latin-1")

