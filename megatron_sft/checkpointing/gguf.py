"""A GGUF file (llama.cpp's format) as a Hugging Face directory: dequantized once, cached, reused.

transformers (with the `gguf` package) reads the GGUF's weights, config, tokenizer and chat template; the
result is saved as an ordinary HF directory (fp32 safetensors, so the dequantized values are kept exactly), and
from there the run is the same as for any HF model. The cache entry is named by the file's content hash, built
in a staging directory and renamed into place, so a killed conversion never leaves a half directory that looks
complete, and concurrent callers (every rank of a launch) wait on one lock instead of converting twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

from megatron_sft.checkpointing.names import GGUF_SOURCE
from megatron_sft.errors import UserError
from megatron_sft.models.registry import FAMILIES, family_for_gguf

DEFAULT_WORK_DIR = "/tmp/megatron_workspace"  # the launcher's MLM_WORK_DIR default
SOURCE_RECORD = GGUF_SOURCE
CONVERTER = 1  # bump when the conversion changes: older cache entries are then converted again


def is_gguf(path: str | os.PathLike | None) -> bool:
    return path is not None and str(path).lower().endswith(".gguf")


def default_cache_dir() -> Path:
    """$MLM_WORK_DIR/gguf, as the launcher scripts use it."""
    return Path(os.environ.get("MLM_WORK_DIR") or DEFAULT_WORK_DIR) / "gguf"


def _digest(path: Path, cache: Path) -> str:
    """sha256 of the file, remembered per (path, size, mtime) so a multi-GB GGUF is read once, not per launch."""
    stat = path.stat()
    # ctime and inode change with any rewrite, even one that restores the mtime (cp -p, rsync -t)
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}|{stat.st_ino}"
    memo_file = cache / ".digests.json"
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    if key not in memo:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 24):
                h.update(block)
        memo[key] = h.hexdigest()
        staged = memo_file.with_name(f".digests.{os.getpid()}.tmp")
        staged.write_text(json.dumps(memo))
        os.replace(staged, memo_file)  # readers see the old memo or the new one, never half of one
    return memo[key]


_SPECIAL_TOKENS = ("bos", "eos", "unk", "pad")
_SPECIAL_TOKEN_FIELDS = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id",
                         "pad": "padding_token_id"}


def read_gguf_header(path: Path, flag: str) -> dict:
    """The architecture and special tokens of a GGUF file; a file gguf cannot read, or an unsupported model, is
    one line."""
    from gguf import GGUFReader

    def value(reader, key):
        field = reader.get_field(key)
        return field.contents() if field is not None else None

    try:
        reader = GGUFReader(path)
        arch = value(reader, "general.architecture")
        tokens = value(reader, "tokenizer.ggml.tokens") or []
        special = {name: value(reader, f"tokenizer.ggml.{key}") for name, key in _SPECIAL_TOKEN_FIELDS.items()}
    except Exception as err:  # noqa: BLE001 - gguf raises ValueError, struct/numpy errors, ... on bad files
        reason = str(err).splitlines()[0] if str(err) else "truncated or damaged"
        raise UserError(f"{flag} {path}: not a readable GGUF file, truncated or damaged ({type(err).__name__}: "
                        f"{reason}); download it again") from None
    supported = sorted(f.gguf_architecture for f in FAMILIES.values() if f.gguf_architecture)
    if not arch or family_for_gguf(arch) is None:
        raise UserError(f"{flag} {path}: GGUF architecture {arch or 'missing'} is not supported; supported: "
                        f"{', '.join(supported)}")
    special = {name: tokens[i] for name, i in special.items() if isinstance(i, int) and 0 <= i < len(tokens)}
    return {"architecture": arch, "special_tokens": special}


def hf_dir_from_gguf(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                     flag: str = "--load") -> Path:
    """The cached HF directory of a GGUF file, converting it first when there is none."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"{flag} {path}: no such GGUF file")
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{path.stem}-{_digest(path, cache)[:16]}"
    with open(cache / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another rank may be converting the same file: wait for it
        if _converted_by_this_version(target):
            return target
        header = read_gguf_header(path, flag)
        arch = header["architecture"]
        start = time.monotonic()  # transformers shows its own progress bars meanwhile
        staging = cache / f".{target.name}.partial"
        shutil.rmtree(staging, ignore_errors=True)  # a conversion killed earlier
        _convert(path, staging, header["special_tokens"], flag)
        (staging / SOURCE_RECORD).write_text(json.dumps(
            {"gguf": str(path), "size": path.stat().st_size, "converter": CONVERTER, **header}, indent=1))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
        print(f"{path.name}: dequantized the GGUF ({arch}) into a Hugging Face directory in "
              f"{time.monotonic() - start:.0f} s: {target} (reused from now on)", file=sys.stderr, flush=True)
    return target


def _converted_by_this_version(target: Path) -> bool:
    try:
        return json.loads((target / SOURCE_RECORD).read_text()).get("converter") == CONVERTER
    except (OSError, ValueError):
        return False


def _convert(path: Path, out: Path, special_tokens: dict[str, str], flag: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": path.name}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kwargs)
    except Exception as err:  # noqa: BLE001 - unsupported quantization types raise NotImplementedError, ...
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{flag} {path}: transformers cannot read this GGUF ({reason})") from None
    # transformers 5.14.1 mislabels the special tokens of some GGUFs (SmolLM2's eos comes out as <|im_start|>,
    # id 1, where the file says 2, <|im_end|>): the ids the GGUF itself records are the truth.
    for name, token in special_tokens.items():
        setattr(tokenizer, f"{name}_token", token)
    try:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    except OSError as err:
        raise UserError(f"{flag} {path}: cannot write its Hugging Face form to {out.parent} ({err.strerror or err}); "
                        "free space there or set --gguf-cache-dir / MLM_WORK_DIR elsewhere") from None
