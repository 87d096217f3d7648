"""Nothing of ours outlives the test that started it: find the processes a test left running.

A real-Prometheus test once left a 100,000-step run training for 65 minutes beside the rest of the suite.
After each test, one scan of ``/proc`` finds the processes that
- started during the test (their start time, in clock ticks since boot, is not before the test's),
- belong to this test session (their environment carries :data:`MARKER`, set here for everything the
  session starts: the machine is shared, other people's runs are none of our business),
- and are ours by their command line (:data:`OURS`: the trainer, torchrun, the CLI, the services tests start),
except pytest itself and its ancestors, and what a session- or module-scoped fixture owns across tests
(:func:`own`: sshd, the SLURM daemons) together with the service processes those fork (an sshd per
connection) — but never a training process, even under an owned daemon (a SLURM job left running is a leak).
"""

from __future__ import annotations

import os
import signal
import time
import uuid

MARKER = "BIGOPS_TEST_SESSION"
TRAINING = (b"trainer.train", b"torch.distributed.run", b"bigops.cli.main")
SERVICES = (b"prometheus", b"alertmanager", b"slurmctld", b"slurmd", b"munged", b"sshd")
OURS = TRAINING + SERVICES
OWNED: set[int] = set()
"""Pids that live across tests on purpose (registered by the fixtures that start and stop them)."""

_HZ = os.sysconf("SC_CLK_TCK")


def session_marker() -> str:
    """Set (once per session) the variable every process this session starts inherits; returns it."""
    if MARKER not in os.environ or not os.environ[MARKER].startswith(f"{os.getpid()}-"):
        os.environ[MARKER] = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return os.environ[MARKER]


def own(pid: int) -> None:
    """A fixture that keeps ``pid`` across tests (and stops it at its teardown) says so here."""
    OWNED.add(pid)


def now_ticks() -> int:
    """The current time in the unit of ``/proc/<pid>/stat`` start times (clock ticks since boot)."""
    with open("/proc/uptime") as handle:
        return int(float(handle.read().split()[0]) * _HZ)


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start ticks) of a live process; None when gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[1]), int(fields[19])


def _read(pid: int, name: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def _ancestors(pid: int, parents: dict[int, int]) -> set[int]:
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        pid = parents.get(pid, 0)
    return seen


def left_running(since_ticks: int, marker: str) -> dict[int, str]:
    """pid -> command line of every process of ours started since ``since_ticks`` that is still running."""
    parents, new = {}, []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        stat = _stat(int(name))
        if stat is None:
            continue
        parents[int(name)] = stat[0]
        if stat[1] >= since_ticks:
            new.append(int(name))
    mine = _ancestors(os.getpid(), parents)
    needle = f"{MARKER}={marker}".encode()
    found = {}
    for pid in new:
        if pid in mine or pid in OWNED:
            continue
        cmdline = _read(pid, "cmdline")
        if not any(word in cmdline for word in OURS) or needle not in _read(pid, "environ").split(b"\0"):
            continue
        if not any(word in cmdline for word in TRAINING) and _ancestors(pid, parents) & OWNED:
            continue  # a service an owned daemon forked (sshd's per-connection child)
        found[pid] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    return found


def processes_naming(text: str | os.PathLike) -> dict[int, str]:
    """pid -> command line of every live process whose command line contains ``text`` (e.g. a run
    directory: its launcher, torchrun and ranks)."""
    needle = os.fsencode(text)
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and _stat(int(name)) is not None:
            cmdline = _read(int(name), "cmdline")
            if needle in cmdline:
                found[int(name)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    return found


def wait_gone(text: str | os.PathLike, timeout: float) -> dict[int, str]:
    """Wait (polling) until no process names ``text``; what is still there after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    left = processes_naming(text)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = processes_naming(text)
    return left


def reap(since_ticks: int, marker: str, grace_s: float = 2.0) -> dict[int, str]:
    """What the test left running after ``grace_s`` (time to finish exiting), each SIGKILLed by its pid."""
    left = left_running(since_ticks, marker)
    deadline = time.monotonic() + grace_s
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = {pid: cmd for pid, cmd in left.items() if _stat(pid) is not None}
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left
