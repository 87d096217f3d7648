"""One writer per run: flock + lease; a second watcher observes, a dead holder's lock is free again."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from bigops.watchdog.lock import LockHeld, WriterLock, lease_path, read_lease
from trainer.rundir import RunDir


@pytest.fixture
def run(tmp_path):
    root = tmp_path / "run"
    (root / "telemetry").mkdir(parents=True)
    return RunDir(root)


def test_a_second_writer_is_refused_and_told_who_holds_it(run):
    first = WriterLock(run, "supervisor")
    first.acquire()
    with pytest.raises(LockHeld) as held:
        WriterLock(run, "watch").acquire()
    assert held.value.holder["pid"] == os.getpid() and held.value.holder["role"] == "supervisor"
    assert "bigops launch --watch" in str(held.value)
    first.release()
    assert read_lease(run) is None
    second = WriterLock(run, "watch")
    second.acquire()
    assert second.held
    second.release()


def test_the_lock_dies_with_its_holder_however_it_dies(run):
    code = ("import sys, time; sys.path.insert(0, %r); from bigops.watchdog.lock import WriterLock; "
            "from trainer.rundir import RunDir; l = WriterLock(RunDir(%r), 'supervisor'); l.acquire(); "
            "print('held', flush=True); time.sleep(600)") % (os.getcwd(), str(run.root))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(LockHeld):
            WriterLock(run, "watch").acquire()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    lock = WriterLock(run, "watch")
    lock.acquire()  # the kernel released the flock: the stale lease of a dead local pid does not block
    assert read_lease(run)["pid"] == os.getpid()
    lock.release()


def test_a_fresh_lease_of_another_host_counts_as_held_and_a_stale_one_does_not(run):
    lease_path(run).parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    lease = {"pid": 4242, "host": "login-2." + socket.gethostname(), "role": "supervisor", "since": now - 100,
             "renewed": now - 5, "lease_s": 120}
    lease_path(run).write_text(json.dumps(lease))
    with pytest.raises(LockHeld) as held:
        WriterLock(run, "watch").acquire(now)
    assert held.value.holder["host"].startswith("login-2")
    lease_path(run).write_text(json.dumps({**lease, "renewed": now - 600}))
    lock = WriterLock(run, "watch")
    lock.acquire(now)
    assert read_lease(run)["host"] == socket.gethostname()
    lock.release()


def test_bigops_watch_beside_a_writer_observes_and_writes_nothing(run):
    """`bigops watch` next to `bigops launch --watch` rewrote watchdog/state.json from its own memory,
    doubling alerts and erasing the supervisor's restart budget and handled actions."""
    from bigops.watchdog.daemon import state_path
    from bigops.watchdog.state import WatchState
    state = WatchState.load(state_path(run))
    state.restarts.append({"time": 1.0, "from_step": 10, "reason": "crash"})
    state.handled["abc"] = {"time": 1.0}
    state.save()
    before = state_path(run).read_bytes()
    beat = {"rank": 0, "host": socket.gethostname(), "pid": 999999, "step": 5, "time": time.time() - 10_000,
            "phase": "forward"}
    (run.telemetry / "heartbeat").mkdir()
    (run.telemetry / "heartbeat" / "rank-00000.json").write_text(json.dumps(beat))  # a hang, for findings
    lock = WriterLock(run, "supervisor")
    lock.acquire()
    try:
        proc = subprocess.run([sys.executable, "-m", "bigops.cli.main", "watch", str(run.root), "--once"],
                              capture_output=True, text=True, timeout=300, cwd=os.getcwd())
    finally:
        lock.release()
    assert proc.returncode == 0, proc.stderr
    assert "observing" in proc.stderr and "TrainingHang" in proc.stdout
    assert state_path(run).read_bytes() == before
    assert not (run.root / "events.jsonl").exists()


def test_a_second_supervisor_refuses_and_a_finished_one_leaves_the_lock_free(run):
    """Nothing stopped two supervisors on one run."""
    from bigops.errors import ConfigError
    from bigops.watchdog.supervisor import Supervisor
    from trainer.config import RunConfig

    spawned = []
    first = WriterLock(run, "supervisor")
    first.acquire()
    try:
        with pytest.raises(ConfigError, match="bigops launch --watch .*stop it first"):
            Supervisor(run, RunConfig(), spawn=lambda: spawned.append(1), say=lambda line: None).run_until_done()
        assert spawned == []  # refused before anything started
    finally:
        first.release()

    class Finished:
        pid, returncode = os.getpid(), 0

        def poll(self):
            return 0

        def wait(self, timeout=None):
            return 0

    def spawn():
        from trainer import exitcodes
        exitcodes.record(run.exit_record, exitcodes.FINISHED, "done", rank=0)
        return Finished()

    assert Supervisor(run, RunConfig(), spawn=spawn, say=lambda line: None).run_until_done() == 0
    WriterLock(run, "watch").acquire()  # released on the way out
