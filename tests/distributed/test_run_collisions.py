"""Runs that collide, change or are stopped, at DP=2 through the launchers users use (finetune.sh's torchrun
wrapper, finetune.sh itself): a second run into a claimed --save, an unreadable tracker, a user error that must
reach the user every time, a resume whose settings changed, Ctrl-C. Nothing saved may be lost or silently
replaced; every refusal is one line."""

from __future__ import annotations

import json
import shutil
import signal

import pytest

from tests.conftest import WORKERS
from tests.distributed.runs import (FINETUNE, ITERS, digests, error_lines, flags_for, launch, losses, run,
                                    signalled_after_iteration_3, tracker)
from tests.workflow.helpers import run_script, script_env

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(900)]


def _saved_digests(save) -> dict:
    return {p.name: digests(p) for p in sorted(save.glob("iter_*"))}


def test_a_second_run_into_a_claimed_save_is_refused_and_the_first_finishes_exactly(base):
    save = base["out"] / "claimed"
    first = launch([str(WORKERS / "slow_step.py"), "3", "45"], flags_for(base, save))
    try:
        for line in first.stdout:
            if "holding after iteration 3" in line:
                break
        else:
            raise AssertionError("the first run ended before iteration 3")
        code, out = run(FINETUNE, flags_for(base, save, iters=ITERS + 4))
        assert code == 2, out[-3000:]
        [line] = error_lines(out)
        assert f"--save {save} is in use by another run" in line and "pid" in line and "started" in line, line
    finally:
        rest = first.communicate(timeout=300)[0]
    assert first.returncode == 0, rest[-3000:]
    assert tracker(save) == str(ITERS)
    got, want = losses(save), losses(base["straight"])
    assert [got[i] for i in range(1, ITERS + 1)] == [want[i] for i in range(1, ITERS + 1)]
    assert _saved_digests(save).keys() == _saved_digests(base["straight"]).keys()
    assert not list(save.glob(".*")), list(save.glob(".*"))  # the claim released, no staging left


def test_an_unreadable_tracker_through_finetune_sh_is_one_line_and_changes_nothing(base, tmp_path):
    save = tmp_path / "run"
    shutil.copytree(base["straight"], save)
    (save / "latest_checkpointed_iteration.txt").write_text("garbage\n")
    before = _saved_digests(save)
    env = script_env(tmp_path, MLM_MODEL_SAVE=str(save), HF_MODEL_CKPT=str(base["model"]), DATASET=str(base["data"]),
                     DP="2", MLM_EXTRA_ARGS="--train-iters 4 --save-interval 2")
    proc = run_script("finetune", "tiny", env, check=False)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "expected an iteration number or 'release', found 'garbage'" in lines[0], lines
    assert _saved_digests(save) == before


def _with(flags: list[str], flag: str, value: str) -> list[str]:
    flags = list(flags)
    flags[flags.index(flag) + 1] = value
    return flags


# A user error at parse time (every rank alike) and one at load time, after the process group formed.
ERRORS = {"parse: bad tracker": "expected an iteration number or 'release'",
          "load: other data on resume": "saved with other data"}


@pytest.mark.parametrize("kind", sorted(ERRORS))
def test_every_launch_with_a_user_error_prints_it_once(base, tmp_path, kind):
    """torchrun stops the other workers as soon as one exits: the line must arrive anyway, every time."""
    save = tmp_path / "run"
    shutil.copytree(base["straight"], save)
    flags = flags_for(base, save, load=save, iters=ITERS + 2)
    if kind.startswith("parse"):
        (save / "latest_checkpointed_iteration.txt").write_text("garbage\n")
    else:
        shutil.copy(base["data"], tmp_path / "other.jsonl")
        flags = _with(flags, "--data-path", str(tmp_path / "other.jsonl"))
    for attempt in range(6):
        code, out = run(FINETUNE, flags)
        lines = error_lines(out)
        assert code == 2 and len(lines) == 1 and ERRORS[kind] in lines[0], (attempt, out[-3000:])


def _resumed(base, tmp_path, *extra: str) -> tuple[int, str, object]:
    save = tmp_path / "run"
    shutil.copytree(base["straight"], save)
    code, out = run(FINETUNE, flags_for(base, save, load=save, iters=ITERS + 2) + ["--ckpt-step", "4", *extra])
    return code, out, save


def test_resume_with_another_global_batch_size_is_refused_naming_the_flags(base, tmp_path):
    code, out, save = _resumed(base, tmp_path, "--global-batch-size", "8")
    [line] = error_lines(out)
    assert code == 2 and "saved at --global-batch-size 4, resumed at 8" in line, out[-3000:]
    assert "--override-opt_param-scheduler" in line and "--finetune" in line
    assert tracker(save) == str(ITERS)


def test_resume_with_a_new_learning_rate_says_so_and_applies_it(base, tmp_path):
    """The straight run decays linearly from 1e-3 to 0 over 6 iterations of 4 samples; resumed at 4 with --lr 2e-3
    and 8 iterations, iteration 5 runs on the new schedule (2e-3 over 32 samples), not on the saved one (which
    would reach 0 at iteration 6 and stay there)."""
    code, out, save = _resumed(base, tmp_path, "--lr", "2e-3")
    assert code == 0, out[-3000:]
    notice = next(line for line in out.splitlines() if "learning-rate schedule follows the new flags" in line)
    assert "max_lr 0.001 -> 0.002" in notice, notice

    def lrs(folder):
        return {r["iteration"]: r["lr"] for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())
                if r["kind"] == "train"}

    samples = 24 * (1 - lrs(base["straight"])[5] / 1e-3)  # where the schedule stood at iteration 5
    assert lrs(save)[5] == pytest.approx(2e-3 * (1 - samples / 32))
    assert all(lr > 0 for i, lr in lrs(save).items() if i < ITERS + 2)


def test_resume_with_another_data_path_is_refused(base, tmp_path):
    other = tmp_path / "other.jsonl"
    shutil.copy(base["data"], other)
    save = tmp_path / "run"
    shutil.copytree(base["straight"], save)
    code, out = run(FINETUNE, _with(flags_for(base, save, load=save, iters=ITERS + 2), "--data-path", str(other)))
    [line] = error_lines(out)
    assert code == 2 and "saved with other data" in line and str(other) in line and "--finetune" in line, line
    assert tracker(save) == str(ITERS)


def test_ctrl_c_saves_says_so_in_one_line_and_the_resume_is_exact(base, tmp_path):
    """Ctrl-C in a terminal sends SIGINT to the launcher (torchrun's workers run in sessions of their own)."""
    save = tmp_path / "interrupted"
    code, out = signalled_after_iteration_3(base, save, signal.SIGINT, WORKERS / "slow_step.py")
    assert code == 130, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    assert f"interrupted at iteration 3; saved {save}/iter_0000003" in out and tracker(save) == "3", out[-3000:]
    code, out = run(FINETUNE, flags_for(base, save, load=save))
    assert code == 0 and f"resumed {save}/iter_0000003 at iteration 3" in out, out[-3000:]
    got, want = losses(save), losses(base["straight"])
    assert [got[i] for i in range(4, ITERS + 1)] == [want[i] for i in range(4, ITERS + 1)]
