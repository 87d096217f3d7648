"""A rank's lifeline to what started it: when the launcher (or the supervisor) is gone, the rank stops.

torchrun starts each worker in its own session, so neither a signal to the launcher's process group nor
the launcher's death reaches the ranks: a killed ``bigops launch`` (SIGKILL included) used to leave torchrun
and its ranks training for as long as the run had steps. ``launcher.local.spawn`` therefore names its own
process in the ranks' environment (:data:`GUARDIAN_PID_ENV`, with its start time :data:`GUARDIAN_START_ENV`
so that a recycled pid is not taken for it), and each rank watches it from a daemon thread:

- the guardian is gone (or the rank's parent, torchrun, is: the rank was re-parented) -> the rank asks itself
  to stop exactly as SIGTERM does (``trainer.control``'s signal flag): every rank saves at the next step
  boundary and exits STOPPED_BY_SIGNAL, and torchrun, its workers gone, exits too;
- the rank then makes no progress for ``grace_s`` (stuck in a collective whose peer died, where no Python
  signal handler ever runs) -> it exits hard (``os._exit``) so that nothing is left behind.

Without :data:`GUARDIAN_PID_ENV` (a SLURM job: srun and slurmstepd own the ranks' lives; a rank run by hand)
there is no lifeline. :data:`LAUNCH_ID_ENV` names one start of the ranks; the heartbeats carry it (the hang
detector keys a hang by it).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

GUARDIAN_PID_ENV = "BIGOPS_GUARDIAN_PID"
GUARDIAN_START_ENV = "BIGOPS_GUARDIAN_START"
LAUNCH_ID_ENV = "BIGOPS_LAUNCH_ID"
GRACE_ENV = "BIGOPS_LIFELINE_GRACE_S"
DEFAULT_GRACE_S = 120.0
"""Seconds without progress, once the guardian is gone, before the rank exits without saving."""
CHECKPOINT_GRACE_S = 1800.0
"""... while the rank is writing a checkpoint (a large save is minutes with no heartbeat)."""


def process_start(pid: int) -> int | None:
    """The start time of a live process (clock ticks since boot, ``/proc/<pid>/stat`` field 22), or None when
    there is no such process or it has exited (a zombie or a dead task is gone for us)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2:].split()  # the command name may hold spaces and parentheses
    if len(fields) < 20 or fields[0] in (b"Z", b"X", b"x"):
        return None
    try:
        return int(fields[19])
    except ValueError:
        return None


def guardian_env(launch_id: str, pid: int | None = None) -> dict[str, str]:
    """The variables a launcher puts in its ranks' environment to be their guardian (default: itself)."""
    pid = os.getpid() if pid is None else pid
    env = {GUARDIAN_PID_ENV: str(pid), LAUNCH_ID_ENV: launch_id}
    start = process_start(pid)
    if start is not None:
        env[GUARDIAN_START_ENV] = str(start)
    return env


def launch_id(environ: dict[str, str] | None = None) -> str | None:
    """This launch's id (``BIGOPS_LAUNCH_ID``), or None outside a bigops launch."""
    value = (os.environ if environ is None else environ).get(LAUNCH_ID_ENV, "").strip()
    return value[:64] or None


@dataclass
class Guardian:
    """The process whose death ends this rank: a pid and, when known, its start time."""

    pid: int
    start: int | None = None

    def alive(self) -> bool:
        start = process_start(self.pid)
        return start is not None and (self.start is None or start == self.start)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Guardian | None":
        """The guardian named in the environment; None when there is none (SLURM, by hand) or it is unreadable."""
        environ = os.environ if environ is None else environ
        try:
            pid = int(environ.get(GUARDIAN_PID_ENV, ""))
        except ValueError:
            return None
        if pid <= 1:
            return None
        try:
            start = int(environ[GUARDIAN_START_ENV])
        except (KeyError, ValueError):
            start = process_start(pid)  # read now: still guards against a reuse after this point
        return cls(pid, start)


def _request_stop() -> None:
    """The SIGTERM path: the handler ``trainer.control`` installed sets the flag every rank agrees on."""
    os.kill(os.getpid(), signal.SIGTERM)


class Lifeline:
    """Watches the guardian (and the parent) every ``poll_s`` from a daemon thread; see the module doc.

    ``progress`` returns anything that changes while the rank makes progress (the heartbeat's beat count and
    phase); ``on_hard_exit`` is called (best effort) just before ``os._exit(exit_code)``."""

    def __init__(self, guardian: Guardian, poll_s: float = 1.0, grace_s: float = DEFAULT_GRACE_S,
                 checkpoint_grace_s: float = CHECKPOINT_GRACE_S, request_stop: Callable[[], None] = _request_stop,
                 progress: Callable[[], object] | None = None, on_hard_exit: Callable[[str], None] | None = None,
                 exit_code: int = 1, parent: int | None = None, hard_exit: Callable[[int], None] = os._exit):
        self.guardian, self.poll_s, self.grace_s, self.checkpoint_grace_s = guardian, poll_s, grace_s, checkpoint_grace_s
        self.request_stop, self.progress, self.on_hard_exit = request_stop, progress, on_hard_exit
        self.exit_code, self.hard_exit = exit_code, hard_exit
        self.parent = os.getppid() if parent is None else parent
        self.lost_at: float | None = None
        self.reason = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_env(cls, **kwargs) -> "Lifeline | None":
        guardian = Guardian.from_env()
        if guardian is None:
            return None
        try:
            kwargs.setdefault("grace_s", float(os.environ.get(GRACE_ENV, DEFAULT_GRACE_S)))
        except ValueError:
            pass
        return cls(guardian, **kwargs)

    def lost(self) -> str:
        """Why the rank has lost what started it ('' while it has not)."""
        if not self.guardian.alive():
            return f"its launcher (pid {self.guardian.pid}) is gone"
        if os.getppid() != self.parent:
            return f"its parent (pid {self.parent}) is gone"
        return ""

    def check(self, now: float, last: list) -> bool:
        """One poll; ``last`` = [progress value, when it last changed]. True when the rank must exit hard."""
        if self.lost_at is None:
            self.reason = self.lost()
            if not self.reason:
                return False
            self.lost_at = now
            last[:] = [self._progress(), now]
            print(f"lifeline: {self.reason}: saving at the next step, then exiting", file=sys.stderr, flush=True)
            try:
                self.request_stop()
            except OSError:
                pass
            return False
        value = self._progress()
        if value != last[0]:
            last[:] = [value, now]
            return False
        grace = self.checkpoint_grace_s if _phase(value) == "checkpoint" else self.grace_s
        return now - last[1] >= grace

    def _progress(self) -> object:
        try:
            return self.progress() if self.progress is not None else None
        except Exception:  # noqa: BLE001 - a progress probe never kills the watcher
            return None

    def _run(self) -> None:
        last: list = [None, time.monotonic()]
        while not self._stop.wait(self.poll_s):
            if self.check(time.monotonic(), last):
                message = f"{self.reason}, and no progress for {time.monotonic() - last[1]:.0f} s: exiting without saving"
                print(f"lifeline: {message}", file=sys.stderr, flush=True)
                if self.on_hard_exit is not None:
                    try:
                        self.on_hard_exit(message)
                    except Exception:  # noqa: BLE001 - exiting matters more than the record
                        pass
                self.hard_exit(self.exit_code)
                return

    def start(self) -> "Lifeline":
        self._thread = threading.Thread(target=self._run, name="bigops-lifeline", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()


def _phase(value: object) -> object:
    return value[-1] if isinstance(value, tuple) and value else None
