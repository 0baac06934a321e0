"""Checkpoints that survive faults, at DP=2 over gloo: a rerun, a kill -9 at every point of a save, a full disk,
a truncated shard. Each test asserts what a user cares about: nothing saved is lost, the resume is exact, and
a failure is one line that names the file and the intact checkpoint."""

from __future__ import annotations

import shutil
import signal
import subprocess

import pytest

from tests.conftest import WORKERS
from tests.distributed.runs import (FINETUNE, ITERS, digests, error_lines, flags_for, kill_tree, launch, losses, run,
                                    signalled_after_iteration_3, tracker)
from tests.workflow.helpers import run_script, script_env

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.mark.parametrize("phase", ["shards", "hf_assets", "manifest", "tracker"])
def test_kill_during_a_save_keeps_the_previous_checkpoint_and_the_resume_is_exact(base, phase):
    save = base["out"] / f"killed_{phase}"
    flags = flags_for(base, save)
    proc = launch([str(WORKERS / "paused_save.py"), phase, "iter_0000004", "300"], flags)
    try:
        for line in proc.stdout:
            if "save of iter_0000004 paused" in line:
                break
        else:
            raise AssertionError(f"the run ended before the save of iteration 4 reached {phase}")
    finally:
        kill_tree(proc)
    assert tracker(save) == "2"
    code, out = run(FINETUNE, flags_for(base, save, load=save))
    assert code == 0, out[-4000:]
    assert f"resumed {save}/iter_0000002 at iteration 2" in out
    assert "is no longer running; this run takes it over" in out  # the killed run's claim on --save
    assert not list(save.glob(".*")), list(save.glob(".*"))  # no staging directory or claim left behind
    assert tracker(save) == str(ITERS)
    got, want = losses(save), losses(base["straight"])
    assert [got[i] for i in range(3, ITERS + 1)] == [want[i] for i in range(3, ITERS + 1)]


def test_kill_while_saving_an_iteration_that_exists_leaves_the_existing_one_intact(base):
    """Resumed from iteration 4 (--ckpt-step), the run saves iteration 6 again: killed mid-save, the old iter_6
    must still be whole, byte for byte, and still the latest."""
    save = base["out"] / "killed_replace"
    shutil.copytree(base["straight"], save)
    before = digests(save / f"iter_{ITERS:07d}")
    proc = launch([str(WORKERS / "paused_save.py"), "manifest", f"iter_{ITERS:07d}", "300"],
                  flags_for(base, save, load=save) + ["--ckpt-step", "4"])
    try:
        for line in proc.stdout:
            if f"save of iter_{ITERS:07d} paused" in line:
                break
        else:
            raise AssertionError("the run ended before the save of the last iteration")
    finally:
        kill_tree(proc)
    assert digests(save / f"iter_{ITERS:07d}") == before and tracker(save) == str(ITERS)


def test_sigterm_saves_and_the_resume_is_exact(base):
    """A scheduler's preemption notice (SIGTERM to torchrun, forwarded to the workers) after iteration 3: the run
    saves iteration 3 and stops; the resume continues as the straight run did."""
    save = base["out"] / "sigterm"
    code, out = signalled_after_iteration_3(base, save, signal.SIGTERM, WORKERS / "slow_step.py")
    assert "SIGTERM received" in out and tracker(save) == "3", out[-3000:]
    assert code == 128 + signal.SIGTERM and "Traceback" not in out, out[-3000:]
    code, out = run(FINETUNE, flags_for(base, save, load=save))
    assert code == 0 and f"resumed {save}/iter_0000003 at iteration 3" in out, out[-3000:]
    got, want = losses(save), losses(base["straight"])
    assert [got[i] for i in range(4, ITERS + 1)] == [want[i] for i in range(4, ITERS + 1)]


def test_rerunning_a_finished_run_trains_nothing_and_changes_no_byte(base):
    save = base["out"] / "rerun"
    shutil.copytree(base["straight"], save)
    before = digests(save / f"iter_{ITERS:07d}")
    assert any(name.startswith("hf_assets/tokenizer") for name in before), before
    code, out = run(FINETUNE, flags_for(base, save, load=save))
    assert code == 0, out[-4000:]
    assert f"already at iteration {ITERS} of {ITERS}; nothing to train" in out
    assert "loss nan" not in out and "saved checkpoint" not in out
    assert digests(save / f"iter_{ITERS:07d}") == before
    assert sorted(p.name for p in save.iterdir() if p.name.startswith(("iter_", "."))) == [
        "iter_0000002", "iter_0000004", "iter_0000006"]
    # and generate.sh still loads the model and its tokenizer from it
    prompts = base["out"] / "prompts.txt"
    prompts.write_text("reverse: abc\n")
    env = script_env(base["out"], MLM_MODEL_CKPT=str(save), PROMPTS_PATH=str(prompts),
                     MLM_EXTRA_ARGS="--max-new-tokens 4")
    proc = run_script("generate", "tiny", env)
    assert f"iter_{ITERS:07d}" in proc.stdout + proc.stderr and "reverse: abc" in proc.stdout, proc.stdout[-2000:]


def test_truncated_shard_is_named_and_the_resume_falls_back_exactly(base):
    save = base["out"] / "truncated"
    shutil.copytree(base["straight"], save)
    shard = sorted((save / f"iter_{ITERS:07d}").glob("*.distcp"))[-1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    code, out = run(FINETUNE, flags_for(base, save, load=save, iters=ITERS + 2) + ["--ckpt-step", str(ITERS)])
    assert code == 2 and len(error_lines(out)) == 1, out[-3000:]
    assert str(shard) in error_lines(out)[0] and "truncated" in error_lines(out)[0]
    # a longer run would stretch the LR schedule from the resume on; keeping the checkpoint's keeps 5-6 comparable
    keep = ["--use-checkpoint-opt_param-scheduler"]
    code, out = run(FINETUNE, flags_for(base, save, load=save, iters=ITERS + 2) + keep)
    assert code == 0, out[-4000:]
    warning = next(line for line in out.splitlines() if "newest intact" in line)
    assert str(shard) in warning and "loading iter_0000004" in warning
    assert f"resumed {save}/iter_0000004 at iteration 4" in out
    got, want = losses(save), losses(base["straight"])
    assert [got[i] for i in (5, 6)] == [want[i] for i in (5, 6)]
    assert tracker(save) == str(ITERS + 2)


def test_keep_last_deletes_older_iterations_only_after_a_newer_one_is_saved(base):
    save = base["out"] / "keep_last"
    code, out = run(FINETUNE, flags_for(base, save) + ["--keep-last", "1"])
    assert code == 0, out[-4000:]
    assert sorted(p.name for p in save.iterdir() if p.is_dir()) == [f"iter_{ITERS:07d}"]
    assert "--keep-last 1: deleted" in out and tracker(save) == str(ITERS)


@pytest.fixture
def small_disk(base, tmp_path):
    """A tmpfs with room for one checkpoint of the tiny model and a half, not for two."""
    one = sum(p.stat().st_size for p in (base["straight"] / "iter_0000002").rglob("*") if p.is_file())
    mount = tmp_path / "disk"
    mount.mkdir()
    size = f"size={one * 3 // 2 // 1024}k"
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", size, "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_disk_full_during_a_save_removes_it_and_keeps_the_previous_one(base, small_disk):
    """The check before the save is bypassed (another process filled the disk): the write itself fails."""
    save = small_disk / "run"
    code, out = run([str(WORKERS / "no_space_check.py")], flags_for(base, save))
    assert code == 2, out[-3000:]
    [line] = error_lines(out)
    assert "saving" in line and "iter_0000004" in line and "ran out of space" in line
    assert f"last intact checkpoint: {save}/iter_0000002" in line
    assert sorted(p.name for p in save.iterdir() if p.is_dir() or p.name.startswith(".")) == ["iter_0000002"]
    moved = base["out"] / "after_disk_full"
    shutil.copytree(save, moved)
    code, out = run(FINETUNE, flags_for(base, moved, load=moved))
    assert code == 0 and f"resumed {moved}/iter_0000002 at iteration 2" in out, out[-4000:]
    got, want = losses(moved), losses(base["straight"])
    assert [got[i] for i in range(3, ITERS + 1)] == [want[i] for i in range(3, ITERS + 1)]


def test_too_little_space_is_one_line_before_the_save(base, small_disk):
    save = small_disk / "run"
    code, out = run(FINETUNE, flags_for(base, save))
    assert code == 2, out[-3000:]
    [line] = error_lines(out)
    assert "not enough disk space to save iteration 4" in line and f"{save}/iter_0000002" in line
    assert sorted(p.name for p in save.iterdir() if p.is_dir() or p.name.startswith(".")) == ["iter_0000002"]
    shutil.rmtree(save)
    (small_disk / "filler").write_bytes(b"\0" * (shutil.disk_usage(small_disk).free // 2))  # not one fits now
    code, out = run(FINETUNE, flags_for(base, small_disk / "run2"))
    assert code == 2 and len(error_lines(out)) == 1, out[-3000:]
    assert "not enough disk space at start-up" in error_lines(out)[0]
    assert not [p for p in (small_disk / "run2").iterdir() if p.is_dir()]
