"""A .gguf file as HF_MODEL_CKPT / --load: a broken or unsupported one is one line before anything launches, and
the cached Hugging Face directory is never half-written. (The real GGUF end to end: tests/real/test_smollm2.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from megatron_sft.checkpointing import gguf as gguf_cache
from megatron_sft.errors import UserError
from tests.workflow.helpers import run_script, script_env

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def write_gguf(path: Path, architecture: str) -> Path:
    """A minimal valid GGUF file (one tensor) that names `architecture`."""
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _finetune_error(tmp_path: Path, hf_model_ckpt: Path) -> str:
    data = tmp_path / "chat.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
    env = script_env(tmp_path / "work", HF_MODEL_CKPT=str(hf_model_ckpt), DATASET=str(data))
    proc = run_script("finetune", MODEL, env, timeout=120, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("finetune.sh: error: "), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    return lines[0]


def test_an_unsupported_gguf_architecture_is_one_line(tmp_path):
    line = _finetune_error(tmp_path, write_gguf(tmp_path / "gemma.gguf", "gemma2"))
    assert "GGUF architecture gemma2 is not supported; supported: llama, qwen2, qwen3, qwen3moe" in line


@pytest.mark.parametrize("keep", [40, 200])
def test_a_truncated_gguf_is_one_line(tmp_path, keep):
    whole = write_gguf(tmp_path / "whole.gguf", "llama").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(whole[:keep])
    line = _finetune_error(tmp_path, tmp_path / "cut.gguf")
    assert "cut.gguf: not a readable GGUF file, truncated or damaged" in line and "download it again" in line


def test_a_file_that_is_not_gguf_is_one_line(tmp_path):
    (tmp_path / "model.gguf").write_text("{}")
    assert "not a readable GGUF file" in _finetune_error(tmp_path, tmp_path / "model.gguf")


def test_a_missing_gguf_is_one_line(tmp_path):
    assert "HF_MODEL_CKPT=" in _finetune_error(tmp_path, tmp_path / "nowhere.gguf")


def test_an_interrupted_conversion_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    source = write_gguf(tmp_path / "m.gguf", "llama")

    def dies_half_way(path, out, special_tokens, flag):
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_cache, "_convert", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        gguf_cache.hf_dir_from_gguf(source, tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")] == []

    def converts(path, out, special_tokens, flag):
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(gguf_cache, "_convert", converts)
    hf_dir = gguf_cache.hf_dir_from_gguf(source, tmp_path / "cache")
    assert (hf_dir / "config.json").is_file() and (hf_dir / gguf_cache.SOURCE_RECORD).is_file()

    monkeypatch.setattr(gguf_cache, "_convert", dies_half_way)  # the cache hit converts nothing
    assert gguf_cache.hf_dir_from_gguf(source, tmp_path / "cache") == hf_dir


def test_the_cache_is_named_by_content(tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_cache, "_convert", lambda path, out, *_: out.mkdir(parents=True))
    a = gguf_cache.hf_dir_from_gguf(write_gguf(tmp_path / "a.gguf", "llama"), tmp_path / "cache")
    (tmp_path / "a.gguf").unlink()
    b = gguf_cache.hf_dir_from_gguf(write_gguf(tmp_path / "a.gguf", "qwen3"), tmp_path / "cache")
    assert a != b, "a different file under the same name must not reuse the old conversion"


def test_unreadable_errors_name_the_flag(tmp_path):
    with pytest.raises(UserError, match=r"^--pretrained-model-path .*x.gguf: no such GGUF file$"):
        gguf_cache.hf_dir_from_gguf(tmp_path / "x.gguf", tmp_path, flag="--pretrained-model-path")
