"""One run per stage directory at a time: an exclusive lock file naming its holder (pid, host).

Two runs of one stage in one directory would both write into it: with different settings the last
one silently wins the weights and config and `metrics.csv` interleaves. So `run_stage` holds a lock
for the whole run. The lock is a file created with O_EXCL *beside* the directory (`.<dir>.lock`,
so `overwrite=true` removing the directory never removes a held lock) and holds the holder's pid,
host, start time and command. A lock whose holder died (kill -9, a crash, a reboot) is stale: on
the same host the pid is checked — gone, or reused by a later process (its start time differs) —
and the lock is taken over with a warning. A lock held from another host cannot be checked; the
error says which file to delete if that run is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from reasondiff.core.errors import UserError

log = logging.getLogger("reasondiff")

UNREADABLE_GRACE_S = 10.0
"""A lock file that stays empty/unparseable this long was left by a process killed between
creating and writing it: stale."""


def lock_path(directory: str | os.PathLike) -> Path:
    directory = Path(directory)
    return directory.parent / f".{directory.name}.lock"


def _process_start(pid: int) -> str | None:
    """Start time of `pid` in clock ticks since boot (field 22 of /proc/<pid>/stat); None off Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _boot_id() -> str | None:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return None


def holder_alive(holder: dict[str, Any]) -> bool | None:
    """Whether the process holding a lock still runs; None when it cannot be told (another host)."""
    if holder.get("host") != socket.gethostname():
        return None
    if holder.get("boot_id") and _boot_id() and holder["boot_id"] != _boot_id():
        return False  # the machine rebooted since
    pid = int(holder.get("pid", -1))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = _process_start(pid)
    return not (holder.get("process_start") and started and started != holder["process_start"])


def describe(holder: dict[str, Any]) -> str:
    command = holder.get("command", "")
    return (f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('started_at')}"
            + (f": {command}" if command else ""))


class StageLock:
    """`with StageLock(dir, wait=False):` — refuse (UserError naming the holder) or wait while another
    run holds `dir`; take over a stale lock."""

    def __init__(self, directory: str | os.PathLike, *, wait: bool = False, poll_s: float = 2.0) -> None:
        self.directory = Path(directory)
        self.path = lock_path(directory)
        self.wait, self.poll_s = wait, poll_s
        self.token = uuid.uuid4().hex
        self.held = False

    def _record(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "boot_id": _boot_id(),
                "process_start": _process_start(os.getpid()), "token": self.token,
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]}

    def _try_create(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(self._record()))
            handle.flush()
            os.fsync(handle.fileno())
        return True

    def _read_holder(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.path.read_text())
            return holder if isinstance(holder, dict) else None
        except (OSError, json.JSONDecodeError):
            return None

    def _is_stale(self, holder: dict[str, Any] | None) -> bool:
        if holder is None:
            with contextlib.suppress(OSError):
                return time.time() - self.path.stat().st_mtime > UNREADABLE_GRACE_S
            return False
        return holder_alive(holder) is False

    def _break_if_stale(self) -> bool:
        """Remove a stale lock; the check is repeated under a guard so that two runs finding the
        same stale lock never both take it (the second sees the first one's live lock)."""
        guard = self.path.with_name(self.path.name + ".guard")
        with open(guard, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                holder = self._read_holder()
                if not self.path.exists() or not self._is_stale(holder):
                    return False
                log.warning("%s: taking over a stale lock (%s is gone)", self.directory,
                            describe(holder) if holder else "an unreadable lock file")
                self.path.unlink(missing_ok=True)
                return True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def acquire(self) -> None:
        announced = False
        while True:
            if self._try_create():
                self.held = True
                return
            holder = self._read_holder()
            if self._is_stale(holder) and self._break_if_stale():
                continue
            if holder is None:  # being written right now, or unreadable but recent: look again
                time.sleep(0.1)
                continue
            if not self.wait:
                raise UserError(
                    f"{self.directory} is in use by another run ({describe(holder)}); wait for it to finish, "
                    f"or add wait_for_lock=true to queue behind it (if that run is gone, delete {self.path})")
            if not announced:
                log.info("%s is in use by %s: waiting (wait_for_lock=true)", self.directory, describe(holder))
                announced = True
            time.sleep(self.poll_s)

    def release(self) -> None:
        if not self.held:
            return
        holder = self._read_holder()
        if holder is not None and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> StageLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
