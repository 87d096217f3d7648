"""One writer per run: the process that may notify, act and save ``watchdog/state.json``.

Two watchers that both write the state (a ``bigops watch`` beside ``bigops launch --watch``) double every
page and erase each other's restart budget and handled actions; two supervisors train twice. So the
writer holds two things, for as long as it runs:

- ``watchdog/writer.lock``, locked with ``flock`` (exclusive, non-blocking). The kernel releases it when
  the process dies, however it dies: no stale lock after a SIGKILL. Local filesystems, NFS (Linux maps
  flock to NFS byte-range locks) and Lustre mounted with ``-o flock`` honour it across processes.
- ``watchdog/writer.json``, a lease: {pid, host, role, since, renewed, lease_s}, renewed every pass. It
  names the holder for people and other tools, and covers filesystems whose locks do not reach other
  hosts: a lease renewed by another host within ``lease_s`` counts as held, whatever flock said. A lease
  that went stale (its holder died on another host) can be taken over.

Roles: ``supervisor`` (``bigops launch --watch``: it owns the ranks) and ``watch`` (``bigops watch``).
Anyone who cannot get the lock observes: reads, detects, exports metrics, and neither notifies nor acts.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from trainer.rundir import WRITER_LEASE, WRITER_LOCK, RunDir, atomic_write_text

LOCK_FILE = WRITER_LOCK
LEASE_FILE = WRITER_LEASE
DEFAULT_LEASE_S = 120.0


def lock_path(run: RunDir) -> Path:
    return run.writer_lock


def lease_path(run: RunDir) -> Path:
    return run.writer_lease


def read_lease(run: RunDir) -> dict | None:
    """The lease as written by its holder (None: none, or unreadable)."""
    try:
        data = json.loads(lease_path(run).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("pid"), int) or not isinstance(data.get("host"), str):
        return None
    return data


def describe(holder: dict) -> str:
    role = {"supervisor": "bigops launch --watch", "watch": "bigops watch"}.get(holder.get("role"), "a watchdog")
    return f"{role} (pid {holder.get('pid')} on {holder.get('host')})"


class LockHeld(Exception):
    """Another process is the run's writer; ``holder`` is its lease (may be empty when unreadable)."""

    def __init__(self, run: RunDir, holder: dict):
        self.holder = holder
        super().__init__(f"{describe(holder) if holder else 'another watchdog'} is the writer of {run.root}")


@dataclass
class WriterLock:
    run: RunDir
    role: str
    lease_s: float = DEFAULT_LEASE_S
    _fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, now: float | None = None) -> None:
        """Become the writer, or raise :class:`LockHeld` naming who is."""
        if self.held:
            return
        now = time.time() if now is None else now
        path = lock_path(self.run)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(self.run, read_lease(self.run) or {}) from None
        except OSError:
            pass  # ENOLCK/ENOSYS: a filesystem without locks; the lease alone decides (checked below)
        lease = read_lease(self.run)
        if lease is not None and lease.get("host") != socket.gethostname() and \
                now - float(lease.get("renewed", 0)) < float(lease.get("lease_s", self.lease_s)):
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise LockHeld(self.run, lease)
        self._fd = fd
        self._since = now
        self.renew(now)

    def renew(self, now: float | None = None) -> None:
        """Refresh the lease (every pass). A failed write (full disk) keeps the lock: flock still holds."""
        if not self.held:
            return
        now = time.time() if now is None else now
        lease = {"pid": os.getpid(), "host": socket.gethostname(), "role": self.role, "since": self._since,
                 "renewed": now, "lease_s": self.lease_s}
        try:
            atomic_write_text(lease_path(self.run), json.dumps(lease) + "\n")
        except OSError:
            pass

    def release(self) -> None:
        if not self.held:
            return
        lease = read_lease(self.run)
        if lease is not None and lease.get("pid") == os.getpid() and lease.get("host") == socket.gethostname():
            lease_path(self.run).unlink(missing_ok=True)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "WriterLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
