"""The supervised-token chunked LM head (training/lm_head.py) gives Megatron's full-logits loss and gradients.

The reference is --lm-head-chunk-size 0: Megatron-Core's output layer on every token and its
vocab_parallel_cross_entropy, masked afterwards (the path every other training test checks against
transformers). Same batch, same weights: loss and every parameter's gradient, per layout; then 3 steps.
"""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import WORKERS, torchrun
from tests.distributed.test_training import write_reversal_data
from tests.distributed.workers.lm_head import CHUNKS, LAYOUTS

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.numerics, pytest.mark.timeout(900)]
# The chunked LM head computes the same fp32 logits and log-softmax per chunk: only the summation of the loss
# and of the output layer's gradient is split differently (~1e-7 relative); a chunk dropped or counted twice is
# 1/CHUNKS of the loss.
REL = 1e-6


@pytest.fixture(scope="module")
def results(tiny_models, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("lm_head")
    data = write_reversal_data(out / "data.jsonl", 64, seed=0)
    merged = {}
    for world_size in (1, 2):
        torchrun(WORKERS / "lm_head.py", world_size, ["--models", tiny_models["qwen3"].parent, "--data", data,
                                                      "--out", out], timeout=800)
        merged.update(json.loads((out / f"lm_head_ws{world_size}.json").read_text()))
    return merged


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL, abs_tol=1e-12)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_loss_and_every_gradient_equal_the_full_logits_path(results, layout):
    run = results[layout]["batch"]
    tol = 2e-2 if layout == "bf16" else REL  # bf16: the chunked matmuls round differently
    assert run["params"] > 0 and sum(run["supervised_per_rank"]) > 0
    for chunk in map(str, CHUNKS):
        full, chunked = run["loss"]["0"], run["loss"][chunk]
        assert math.isclose(full, chunked, rel_tol=tol), f"{layout}: loss {chunked} at chunk {chunk}, full {full}"
        assert run["max_rel_grad_diff"][chunk] <= tol, f"{layout}: chunk {chunk}: {run['max_rel_grad_diff'][chunk]}"


@pytest.mark.parametrize("layout", sorted(k for k, v in LAYOUTS.items() if v[3] is None and k != "bf16"))
def test_three_training_steps_are_equal(results, layout):
    steps = results[layout]["steps"]
    assert len(steps["0"]) == len(steps["7"]) == 3
    for full, chunked in zip(steps["0"], steps["7"]):
        assert _close(full["loss"], chunked["loss"]) and _close(full["grad_norm"], chunked["grad_norm"]), steps


def test_resume_across_a_change_of_chunk_size_stays_exact(results):
    straight, resumed = results["resume"]["straight"], results["resume"]["resumed"]
    assert len(straight) == len(resumed) == 3
    for a, b in zip(straight, resumed):
        assert _close(a["loss"], b["loss"]) and _close(a["grad_norm"], b["grad_norm"]), (straight, resumed)


@pytest.mark.parametrize("layout", ["dp2_rank1_unsupervised", "cp2_one_rank_supervised"])
def test_a_rank_without_supervised_tokens_neither_fails_nor_changes_the_reduction(results, layout):
    """One rank's model sees no supervised token; the loss and gradients still equal the full path's (checked
    above with every other layout), whose reduction is the sum over all ranks divided by the total count."""
    run = results[layout]["batch"]
    assert min(run["supervised_per_rank"]) == 0 < max(run["supervised_per_rank"]), run["supervised_per_rank"]
    assert all(not math.isnan(loss) for loss in run["loss"].values())
