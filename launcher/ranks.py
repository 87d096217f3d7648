"""The ranks of one local launch, started from warm spares (``trainer.spare``), and the pool that keeps them.

Why not torchrun: its workers are new processes, each importing torch and DeepSpeed again, and it cannot adopt
processes that were started earlier. On a restart that is most of the time to the first resumed step (the
tiny run: 3 s of imports and 2.8 s of Dynamo/Inductor imports inside the engine build, per rank, on a loaded
2-core box). Here a launch is N spares handed their rank (one JSON line each, see ``trainer.spare``): taken
from a :class:`SparePool` that the supervisor refills while the run trains, or started cold (the handover
written at once) when the pool has none.

A :class:`RankGroup` stands for the launch where a ``subprocess.Popen`` of torchrun stood: ``pid`` is the
process group of all its ranks (the first rank leads it, the others join it at the handover), so
``os.killpg(launch.pid, sig)`` reaches every rank (a SIGSTOPped one included); ``poll``/``wait``/
``returncode`` follow all the ranks; and, as torchrun does, when one rank fails the others are asked to stop
(SIGTERM) and killed after ``FAILED_GRACE_S``. Each rank gets torchrun's environment (RANK, LOCAL_RANK,
WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK, ROLE_*, MASTER_ADDR/PORT, TORCHELASTIC_RUN_ID and restart counts).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from trainer.spare import IDLE_NICE

FAILED_GRACE_S = 30.0
"""After a rank fails, how long the others have to stop (torchrun's default) before they are killed."""


def spare_command(run_dir: str | Path, nice: int, ready_fd: int | None = None) -> list[str]:
    """The command of a spare of ``run_dir`` (an argument list; the run dir names it as one of the run's)."""
    ready = ["--ready-fd", str(ready_fd)] if ready_fd is not None else []
    return [sys.executable, "-m", "trainer.spare", "--run-dir", str(run_dir), "--nice", str(nice), *ready]


def rank_environment(base: dict[str, str], rank: int, world: int, master_port: int, launch_id: str) -> dict[str, str]:
    """What torchrun would put in a worker's environment, on one node (``base``: the launch's)."""
    return {**base, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world), "GROUP_RANK": "0", "ROLE_RANK": str(rank), "ROLE_NAME": "default",
            "ROLE_WORLD_SIZE": str(world), "GROUP_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(master_port), "TORCHELASTIC_RUN_ID": launch_id, "TORCHELASTIC_RESTART_COUNT": "0",
            "TORCHELASTIC_MAX_RESTARTS": "0"}


def start_spare(run_dir: str | Path, env: dict[str, str], log_path: Path | None, nice: int,
                report_warm: bool = False) -> subprocess.Popen:
    """One spare: its own process group (joined by the launch's other ranks when it becomes rank 0), its
    output appended to the rank log, its stdin the pipe its handover comes through. ``report_warm``: the
    Popen's ``ready`` is the read end of a pipe that gets one byte when the spare's imports are done."""
    stdout = open(os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640), "ab") if log_path \
        else subprocess.DEVNULL
    ready_r, ready_w = os.pipe() if report_warm else (None, None)
    try:
        proc = subprocess.Popen(spare_command(run_dir, nice, ready_w), env=env, stdin=subprocess.PIPE,
                                stdout=stdout, stderr=subprocess.STDOUT, process_group=0,
                                pass_fds=(ready_w,) if ready_w is not None else ())
    except BaseException:
        for fd in (ready_r, ready_w):
            if fd is not None:
                os.close(fd)
        raise
    finally:
        if log_path:
            stdout.close()
    if ready_w is not None:
        os.close(ready_w)
        os.set_blocking(ready_r, False)
    proc.ready, proc.warm = ready_r, False
    return proc


def is_warm(spare: subprocess.Popen) -> bool:
    """Whether the spare has reported its imports done (reads its pipe without blocking)."""
    if spare.warm or spare.ready is None:
        return spare.warm
    try:
        got = os.read(spare.ready, 1)
    except BlockingIOError:
        return False
    except OSError:
        got = b""
    os.close(spare.ready)
    spare.ready, spare.warm = None, bool(got)
    return spare.warm


def _forget(spare: subprocess.Popen) -> None:
    if spare.ready is not None:
        os.close(spare.ready)
        spare.ready = None


def hand_over(spare: subprocess.Popen, env: dict[str, str], argv: list[str], pgid: int | None) -> None:
    """Write the spare its rank (one line) and close its stdin: it becomes the rank."""
    order = {"env": env, "argv": list(map(str, argv)), "pgid": pgid, "handed": time.time()}
    spare.stdin.write((json.dumps(order) + "\n").encode())
    spare.stdin.close()


def _ready(spare: subprocess.Popen) -> bool:
    return spare.poll() is None


class SparePool:
    """Idle spares of one run, ready to become the ranks of its next launch (the supervisor keeps one).

    ``fill(n)`` tops it up to ``n`` living spares (they import at the lowest priority, beside the training);
    ``take(n)`` gives ``n`` of them (fewer when it has fewer: the launch starts the rest cold); ``close()`` ends
    them (their stdin closed: each exits; killed if it has not within a few seconds). A spare that died while
    idle is dropped, never handed over. The pool's spares share the environment ``env`` of the launches it
    serves (the per-rank part comes with the handover)."""

    def __init__(self, run_dir: str | Path, env: dict[str, str], log_path: Path | None = None):
        self.run_dir, self.env, self.log_path = Path(run_dir), dict(env), log_path
        self.idle: list[subprocess.Popen] = []

    def pids(self) -> set[int]:
        """The idle spares' pids (not ranks: nothing to kill when a launch is stopped)."""
        return {s.pid for s in self.idle if _ready(s)}

    def warm(self) -> int:
        """How many idle spares have finished their imports."""
        return sum(1 for s in self.idle if _ready(s) and is_warm(s))

    def fill(self, n: int, at_once: int | None = None) -> int:
        """Start spares until ``n`` are idle, with at most ``at_once`` still warming at a time (the supervisor
        tops up one by one, each pass: one importer beside the training, not ``n``); returns how many started."""
        self._drop_dead()
        started = 0
        warming = sum(1 for s in self.idle if not is_warm(s))
        while len(self.idle) < n and (at_once is None or warming < at_once):
            warming += 1
            self.idle.append(start_spare(self.run_dir, self.env, self.log_path, IDLE_NICE, report_warm=True))
            started += 1
        return started

    def take(self, n: int) -> list[subprocess.Popen]:
        self._drop_dead()
        self.idle.sort(key=lambda s: not is_warm(s))  # the warm ones first; one still importing finishes as a rank
        taken, self.idle = self.idle[:n], self.idle[n:]
        for s in taken:
            _forget(s)
        return taken

    def _drop_dead(self) -> None:
        for dead in (s for s in self.idle if not _ready(s)):
            dead.wait()
            _forget(dead)
        self.idle = [s for s in self.idle if _ready(s)]

    def close(self, grace_s: float = 5.0) -> None:
        spares, self.idle = self.idle, []
        for s in spares:
            _forget(s)
            try:
                s.stdin.close()
            except OSError:
                pass
        deadline = time.time() + grace_s
        for s in spares:
            try:
                s.wait(timeout=max(0.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                s.kill()
                s.wait()


class RankGroup:
    """The ranks of one launch, seen as one process (see the module doc). ``warm`` counts the ranks that came
    from the pool."""

    def __init__(self, ranks: list[subprocess.Popen], launch_id: str, warm: int = 0):
        self.ranks, self.launch_id, self.warm = ranks, launch_id, warm
        self.pid = ranks[0].pid
        """The launch's process group (the first rank's pid)."""
        self.returncode: int | None = None
        self._failed_at: float | None = None

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        codes = [r.poll() for r in self.ranks]
        if all(c is not None for c in codes):
            # a rank's own failure code before the signals the others were stopped with
            self.returncode = next((c for c in codes if c > 0), next((c for c in codes if c != 0), 0))
            return self.returncode
        if any(c not in (None, 0) for c in codes):  # one failed: stop the rest, as torchrun does
            now = time.monotonic()
            if self._failed_at is None:
                self._failed_at = now
                self.signal(signal.SIGTERM)
            elif now - self._failed_at >= FAILED_GRACE_S:
                self.signal(signal.SIGKILL)
        return None

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired("ranks", timeout)
            time.sleep(0.05)
        return self.returncode

    def signal(self, sig: int) -> None:
        """``sig`` to the launch's process group, and to any rank outside it (a handover that never joined)."""
        _signal_group(self.pid, sig)
        for r in self.ranks:
            if r.poll() is None:
                try:
                    if os.getpgid(r.pid) != self.pid:
                        os.kill(r.pid, sig)
                except ProcessLookupError:
                    pass


def signal_launch(proc, sig: int) -> None:
    """``sig`` to every rank of a launch: a :class:`RankGroup`, or any process leading its own group (a Popen
    started in a session of its own: torchrun, a test's stand-in)."""
    if isinstance(proc, RankGroup):
        proc.signal(sig)
    else:
        _signal_group(proc.pid, sig)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def launch(run_dir: str | Path, world: int, argv: list[str], env: dict[str, str], launch_id: str,
           master_port: int, log_path: Path | None = None, pool: SparePool | None = None) -> RankGroup:
    """Start the ``world`` ranks of one launch: from ``pool``'s spares where it has them, cold otherwise."""
    warm = pool.take(world) if pool is not None else []
    spares = warm + [start_spare(run_dir, env, log_path, 0) for _ in range(world - len(warm))]
    for rank, spare in enumerate(spares):
        own = rank_environment(env, rank, world, master_port, launch_id)
        leader = None if rank == 0 else spares[0].pid
        try:
            hand_over(spare, own, argv, leader)
        except OSError:  # the spare died between the pool's check and now: this rank starts cold
            spare.wait()
            warm = [w for w in warm if w is not spare]
            spares[rank] = start_spare(run_dir, env, log_path, 0)
            hand_over(spares[rank], own, argv, leader)
    return RankGroup(spares, launch_id, warm=len(warm))
