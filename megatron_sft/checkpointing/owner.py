"""One run per save directory: the run that writes checkpoints into --save claims it for its lifetime.

The claim is a file, ROOT/.owner.json, created with O_CREAT | O_EXCL (atomic on local file systems and on NFSv3+,
Lustre and GPFS, where `flock` may be unsupported, local to one client or silently a no-op), naming its owner:
host, pid, the process's start time, and a token. A second run into the same directory is refused in one line
that names the owner. The claim dies with its owner without being removed when the owner is killed (kill -9, a
lost node), so a claim is judged:

- on the owner's own host (same hostname and boot): alive while that pid exists with that start time (a reused
  pid has another one);
- from another host: alive while its heartbeat is fresh: the owner touches the file every HEARTBEAT seconds; one
  untouched for STALE seconds is a dead owner's.

A dead owner's claim is taken over with a notice. The taker first renames the claim to a name of its own (only one
of two racing takers can), checks that what it renamed is the claim it judged dead, then creates its own. The
owner then removes what killed runs left in the directory (cleanup_leftovers): their staging, deleting and replaced
directories and their temporary tracker files, none of which any live run owns any more.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from megatron_sft.checkpointing.names import CLAIM, DELETING, REPLACED, STAGING
from megatron_sft.errors import UserError

log = logging.getLogger(__name__)

HEARTBEAT = 30.0  # seconds between touches of the claim file
STALE = 300.0  # a claim from another host untouched this long is a dead owner's (10 missed heartbeats)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _describe(claim: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(claim.get("started", 0)))
    return f"host {claim.get('host', '?')}, pid {claim.get('pid', '?')}, started {started}"


def owner_is_alive(claim: dict, mtime: float, now: float | None = None) -> bool:
    """Whether the run that wrote `claim` (its file last touched at `mtime`) is still running."""
    if claim.get("host") == socket.gethostname() and claim.get("boot") == _boot_id():
        started = _start_time(int(claim.get("pid", -1)))
        return started is not None and abs(started - float(claim.get("process_start", -1))) < 1.0
    return (now if now is not None else time.time()) - mtime < STALE


class SaveClaim:
    """The claim of this process on `root`; `acquire()` refuses a live owner's directory in one line."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.path = self.root / CLAIM
        self.token = uuid.uuid4().hex[:12]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> dict:
        pid = os.getpid()
        return {"host": socket.gethostname(), "pid": pid, "boot": _boot_id(), "started": time.time(),
                "process_start": _start_time(pid), "token": self.token}

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self._record(), f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _read(self, path: Path | None = None) -> tuple[dict, float] | None:
        path = path or self.path
        try:
            return json.loads(path.read_text() or "{}"), path.stat().st_mtime
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # a claim cut short by a crash while it was written: no owner named
            return {}, path.stat().st_mtime if path.exists() else 0.0

    def acquire(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # each round either creates the claim or finds one (a race lost: look again)
            if self._create():
                self._start_heartbeat()
                return
            found = self._read()
            if found is None:
                continue
            claim, mtime = found
            if owner_is_alive(claim, mtime):
                raise UserError(f"--save {self.root} is in use by another run ({_describe(claim)}; {self.path}); "
                                "wait for it to finish, or save somewhere else")
            if self._take_over(claim):
                log.warning("%s: the run that claimed it (%s) is no longer running; this run takes it over",
                            self.root, _describe(claim))
                self._start_heartbeat()
                return
        raise UserError(f"--save {self.root}: could not claim it ({self.path} keeps changing); is another run "
                        "starting into it?")

    def _take_over(self, dead: dict) -> bool:
        aside = self.root / f"{CLAIM}.stale.{self.token}"
        try:
            os.replace(self.path, aside)  # only one of two racing takers moves the file
        except FileNotFoundError:
            return False
        moved = self._read(aside)
        if moved is None or moved[0] != dead:  # a live run claimed it between our look and the move: give it back
            os.replace(aside, self.path)
            return False
        aside.unlink()
        return self._create()

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(HEARTBEAT):
                try:
                    os.utime(self.path)
                except OSError:
                    pass

        self._thread = threading.Thread(target=beat, name="save-claim-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Remove the claim if it is still this run's (a claim taken over meanwhile is left to its owner)."""
        self._stop.set()
        found = self._read()
        if found is not None and found[0].get("token") == self.token:
            self.path.unlink(missing_ok=True)


def cleanup_leftovers(root: str | os.PathLike) -> list[str]:
    """What killed runs left in a save directory this run now owns: `.iter_N.saving.*` staging, `.iter_N.deleting`
    and `.iter_N.replaced` directories, temporary tracker files, set-aside claims. Returns their names."""
    import shutil

    root = Path(root)
    removed = []
    for path in sorted(root.glob(".*")):
        name = path.name
        if path.is_dir() and name.startswith((".iter_", ".release")) and \
                any(tag in name for tag in (STAGING, DELETING, REPLACED)):
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_file() and f"{CLAIM}.stale." in name:
            path.unlink(missing_ok=True)
        else:
            continue
        removed.append(name)
    for path in root.glob("latest_checkpointed_iteration.txt.tmp*"):
        path.unlink(missing_ok=True)
        removed.append(path.name)
    if removed:
        log.info("%s: removed what interrupted runs left: %s", root, ", ".join(removed))
    return removed
