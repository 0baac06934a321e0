"""The claim on a save directory (checkpointing/owner.py): a live owner refuses, a dead one is taken over, and the
owner clears what killed runs left."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from megatron_sft.checkpointing import owner
from megatron_sft.errors import UserError


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_claim(root, **fields) -> None:
    claim = {"host": socket.gethostname(), "pid": os.getpid(), "boot": owner._boot_id(), "started": time.time(),
             "process_start": owner._start_time(os.getpid()), "token": "other"}
    (root / owner.CLAIM).write_text(json.dumps({**claim, **fields}))


def test_a_live_owner_is_refused_in_one_line_naming_it(tmp_path):
    _write_claim(tmp_path)  # this very process, as another run would be
    with pytest.raises(UserError) as err:
        owner.SaveClaim(tmp_path).acquire()
    text = str(err.value)
    assert "\n" not in text and "in use by another run" in text
    assert f"pid {os.getpid()}" in text and socket.gethostname() in text


def test_a_dead_owner_is_taken_over_and_released(tmp_path, caplog):
    _write_claim(tmp_path, pid=_dead_pid())
    claim = owner.SaveClaim(tmp_path)
    claim.acquire()
    assert "no longer running" in caplog.text
    assert json.loads((tmp_path / owner.CLAIM).read_text())["token"] == claim.token
    claim.release()
    assert not (tmp_path / owner.CLAIM).exists()


def test_a_reused_pid_is_not_the_owner(tmp_path):
    """Same pid, another start time: the pid was reused by an unrelated process after the owner died."""
    _write_claim(tmp_path, process_start=owner._start_time(os.getpid()) - 100)
    claim = owner.SaveClaim(tmp_path)
    claim.acquire()
    claim.release()


def test_another_hosts_claim_is_alive_while_its_heartbeat_is_fresh(tmp_path):
    _write_claim(tmp_path, host="another-node", pid=1)
    with pytest.raises(UserError, match="another-node"):
        owner.SaveClaim(tmp_path).acquire()
    old = time.time() - owner.STALE - 1
    os.utime(tmp_path / owner.CLAIM, (old, old))
    claim = owner.SaveClaim(tmp_path)
    claim.acquire()
    claim.release()


def test_a_second_claim_in_the_same_process_is_refused(tmp_path):
    first = owner.SaveClaim(tmp_path)
    first.acquire()
    with pytest.raises(UserError, match="in use by another run"):
        owner.SaveClaim(tmp_path).acquire()
    first.release()
    assert not (tmp_path / owner.CLAIM).exists()


def test_release_leaves_a_claim_taken_over_meanwhile(tmp_path):
    claim = owner.SaveClaim(tmp_path)
    claim.acquire()
    _write_claim(tmp_path, token="successor")
    claim.release()
    assert json.loads((tmp_path / owner.CLAIM).read_text())["token"] == "successor"


def test_cleanup_removes_only_what_killed_runs_leave(tmp_path):
    for name in (".iter_0000004.saving.host-12", ".iter_0000002.deleting", ".iter_0000006.replaced", "iter_0000002"):
        (tmp_path / name).mkdir()
    (tmp_path / "latest_checkpointed_iteration.txt.tmp.host.12").write_text("4")
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("2")
    (tmp_path / "training.log").write_text("")
    removed = owner.cleanup_leftovers(tmp_path)
    assert sorted(removed) == [".iter_0000002.deleting", ".iter_0000004.saving.host-12", ".iter_0000006.replaced",
                               "latest_checkpointed_iteration.txt.tmp.host.12"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_0000002", "latest_checkpointed_iteration.txt",
                                                          "training.log"]
