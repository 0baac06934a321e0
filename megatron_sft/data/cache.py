"""The prepared-data cache: its key, the build lock, and memory-mapped read access.

The key hashes everything that changes the result, so a cache is reused exactly when it is the same
data: the data files (paths, sizes, modification times) and their `PATH:N` subsets, the record format,
the tokenizer and chat template, seq-length, context parallelism, the masking / truncation /
invalid-record policies, split, seed, and the packer version. Under torchrun the local rank 0 of each
node builds (under a file lock, so two nodes sharing a file system build once); the other ranks wait
for it to appear.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from megatron_sft.checkpointing.integrity import file_checksums, write_durably
from megatron_sft.config import DataConfig
from megatron_sft.data.packing import PACKER_VERSION
from megatron_sft.data.prepare import build_cache, read_chat_template
from megatron_sft.data.sources import fingerprint, parse_sources
from megatron_sft.errors import UserError

log = logging.getLogger(__name__)
CACHE_FORMAT = 3  # 2: metadata.json lists every file's size and CRC32 checksums; 3: messages' "weight"
MISSING = "missing"


def cache_key(cfg: DataConfig, tokenizer) -> tuple[str, dict]:
    sources = parse_sources(cfg.data_path, cfg.finetune_hf_dataset, cfg.finetune_hf_dataset_split)
    template = read_chat_template(cfg.chat_template) or getattr(tokenizer, "chat_template", None) or ""
    inputs = {
        "format": CACHE_FORMAT,
        "packer_version": PACKER_VERSION,
        "sources": [{**fingerprint(s), "weight": s.weight, "subset": s.subset} for s in sources],
        "data_format": cfg.data_format,
        "tokenizer": _tokenizer_digest(tokenizer),
        "special_tokens": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "chat_template": _sha(json.dumps(template, sort_keys=True)),
        "seq_length": cfg.seq_length,
        "max_sample_length": cfg.max_sample_length,
        "context_parallel_size": cfg.context_parallel_size,
        "unmask_user": cfg.unmask_user,
        "loss_turns": cfg.loss_turns,
        "eod_mask_loss": cfg.eod_mask_loss,
        "drop_long_samples": cfg.drop_long_samples,
        "skip_invalid": cfg.skip_invalid,
        "split": list(cfg.split_fractions),
        "seed": cfg.seed,
        "packing_algorithm": cfg.packing_algorithm,
        "sample_limit": cfg.sample_limit,
        "preference": cfg.preference,
    }
    return _sha(json.dumps(inputs, sort_keys=True))[:24], inputs


def prepare(
    cfg: DataConfig, tokenizer, *, is_builder: bool | None = None, progress: bool = True, poll_s: float = 0.5
) -> PreparedData:
    """Return the cache for `cfg`, building it first if needed (builder) or waiting for it (others)."""
    key, inputs = cache_key(cfg, tokenizer)
    root = cfg.cache_root
    final = os.path.join(root, key)
    if _check(final) is None:
        log.info("data: reusing cache %s", final)
        return PreparedData(final)
    if is_builder is None:
        is_builder = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))) == 0
    os.makedirs(root, exist_ok=True)
    failed = final + ".failed"
    if not is_builder:
        _wait_for(final, failed, poll_s)
        return PreparedData(final)
    with _locked(final + ".lock"):
        problem = _check(final)
        if problem is not None:
            if problem != MISSING:
                log.warning("data: %s; rebuilding the cache", problem)
            with contextlib.suppress(FileNotFoundError):
                os.remove(failed)
            tmp = f"{final}.tmp{os.getpid()}"
            # a build of this key killed before its rename left its staging; we hold the build lock, so none is live
            for stale in glob.glob(glob.escape(final) + ".tmp*"):
                log.info("data: removing %s, left by an interrupted build", stale)
                shutil.rmtree(stale, ignore_errors=True)
            log.info("data: building cache %s", final)
            try:
                meta = build_cache(cfg, tokenizer, tmp, progress=progress,
                                   extra_meta={"key": key, "key_inputs": inputs})
                _seal(tmp, meta)
            except BaseException as e:
                shutil.rmtree(tmp, ignore_errors=True)
                with open(failed, "w") as f:
                    f.write(f"{type(e).__name__}: {e}\n")
                raise
            shutil.rmtree(final, ignore_errors=True)
            os.rename(tmp, final)  # atomic: readers see a complete cache or none
    return PreparedData(final)


def source_names(specs: list[str]) -> list[str]:
    """Unique short names of data sources, for figures (loss/<name>): a.jsonl -> a; repeated names get #2, #3."""
    import re

    names = []
    for spec in specs:
        base = re.sub(r":\d+$", "", spec).rstrip("/").rsplit("/", 1)[-1]
        base = re.sub(r"\.(jsonl|json|parquet|arrow)(\.gz)?$", "", base) or spec
        name, k = base, 2
        while name in names:
            name, k = f"{base}#{k}", k + 1
        names.append(name)
    return names


class PreparedData:
    """Read access to one cache directory; token arrays are memory-mapped, not loaded."""

    def __init__(self, path: str):
        self.path = path
        with open(os.path.join(path, "metadata.json")) as f:
            self.meta = json.load(f)
        self.offsets = np.load(os.path.join(path, "sample_offsets.npy"))
        self.tokens = _memmap(os.path.join(path, "tokens.bin"), np.uint32)
        self.supervised = _memmap(os.path.join(path, "supervised.bin"), np.uint8)
        weights = os.path.join(path, "loss_weight.bin")
        self.weights = _memmap(weights, np.float32) if os.path.exists(weights) else None
        self.sample_source = np.load(os.path.join(path, "sample_source.npy"), mmap_mode="r")

    @property
    def source_names(self) -> list[str]:
        """A short name per source (file name without directory, extension or :N subset; else the spec)."""
        return source_names([s["spec"] for s in self.meta["sources"]])

    def __getstate__(self) -> dict:  # DataLoader workers re-open the files instead of copying the arrays
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    @property
    def pad_token_id(self) -> int:
        return int(self.meta["pad_token_id"])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def weighted(self) -> bool:
        """Whether a message of the data carries a loss "weight" other than 1."""
        return self.weights is not None

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, each token's loss weight: the 0/1 supervised flags, or float32 weights if weighted)."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.tokens[a:b], (self.supervised if self.weights is None else self.weights)[a:b]

    def packs(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        offsets = np.load(os.path.join(self.path, f"packs_{split}_offsets.npy"), mmap_mode="r")
        samples = np.load(os.path.join(self.path, f"packs_{split}_samples.npy"), mmap_mode="r")
        return offsets, samples


def _memmap(path: str, dtype) -> np.ndarray:
    if os.path.getsize(path) == 0:  # numpy cannot map an empty file
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def _seal(path: str, meta: dict) -> None:
    """Record every file's size and CRC32 in metadata.json (rewritten last), so a damaged cache is noticed."""
    files = sorted(p for p in Path(path).iterdir() if p.name != "metadata.json")
    crcs = file_checksums(files, fsync=True)
    meta["files"] = {p.name: {"size": p.stat().st_size, "crc32": crcs[p]} for p in files}
    write_durably(Path(path) / "metadata.json", json.dumps(meta, indent=1))


def _check(path: str) -> str | None:
    """None for an intact cache, MISSING when there is none, else what is wrong with it (naming the file)."""
    meta_path = os.path.join(path, "metadata.json")
    if not os.path.isfile(meta_path):
        return MISSING
    try:
        with open(meta_path) as f:
            files = json.load(f)["files"]
    except (ValueError, KeyError, TypeError, OSError) as err:
        return f"{meta_path} is unreadable ({type(err).__name__})"
    listed = {Path(path) / name: want for name, want in sorted(files.items())}
    for file, want in listed.items():
        if not file.is_file():
            return f"{file} is missing"
        if file.stat().st_size != want["size"]:
            return f"{file} has {file.stat().st_size} bytes, its metadata says {want['size']}"
    crcs = file_checksums(list(listed))
    bad = [file for file, want in listed.items() if crcs[file] != want["crc32"]]
    return f"{bad[0]} does not match its checksum in metadata.json" if bad else None


@contextlib.contextmanager
def _locked(path: str):
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("data: another process is building %s; waiting for it", path.removesuffix(".lock"))
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _wait_for(final: str, failed: str, poll_s: float) -> None:
    started = last = time.time()
    while _check(final) is not None:
        if os.path.exists(failed) and os.path.getmtime(failed) >= started - 1:
            with open(failed) as f:
                raise UserError(f"the data cache build on local rank 0 failed: {f.read().strip()}")
        if time.time() - last > 60:
            log.warning("data: still waiting for local rank 0 to build %s", final)
            last = time.time()
        time.sleep(poll_s)


def _tokenizer_digest(tokenizer) -> str:
    """Hash of the tokenizer's vocabulary and pipeline, without the truncation/padding state that
    transformers changes on the object as it is used."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return _sha(repr(tokenizer))
    spec = json.loads(backend.to_str())
    spec.pop("truncation", None)
    spec.pop("padding", None)
    return _sha(json.dumps(spec, sort_keys=True))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
