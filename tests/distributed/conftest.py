"""The straight DP=2 run the fault, collision and interruption tests compare against (built once per session)."""

from __future__ import annotations

import pytest

from tests.distributed.runs import FINETUNE, flags_for, run
from tests.distributed.test_training import write_reversal_data


@pytest.fixture(scope="session")
def base(tiny_models, tmp_path_factory) -> dict:
    """A straight DP=2 run of ITERS iterations: the reference every resumed run must equal bitwise."""
    out = tmp_path_factory.mktemp("faults")
    base = {"out": out, "model": tiny_models["qwen3"], "data": write_reversal_data(out / "data.jsonl", 64, seed=3),
            "cache": out / "cache"}
    straight = out / "straight"
    code, log = run(FINETUNE, flags_for(base, straight))
    assert code == 0, log[-4000:]
    base["straight"] = straight
    return base
