"""Ranks never outlive what started them: the lifeline (trainer.lifeline) and how the launcher sets it up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from trainer import lifeline as ll

ROOT = Path(__file__).resolve().parents[2]


def test_process_start_of_live_dead_and_zombie_processes():
    assert isinstance(ll.process_start(os.getpid()), int)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while ll.process_start(child.pid) is not None and time.monotonic() < deadline:  # a zombie until reaped
        time.sleep(0.05)
    assert ll.process_start(child.pid) is None
    child.wait()
    assert ll.process_start(child.pid) is None


def test_a_recycled_pid_is_not_the_guardian():
    me = ll.Guardian(os.getpid(), ll.process_start(os.getpid()))
    assert me.alive()
    assert not ll.Guardian(os.getpid(), me.start + 1).alive()  # same pid, another process


def test_guardian_from_env():
    env = ll.guardian_env("abc123")
    assert env[ll.GUARDIAN_PID_ENV] == str(os.getpid()) and env[ll.LAUNCH_ID_ENV] == "abc123"
    assert ll.Guardian.from_env(env) == ll.Guardian(os.getpid(), ll.process_start(os.getpid()))
    assert ll.Guardian.from_env({}) is None  # SLURM, or a rank run by hand: no lifeline
    assert ll.Guardian.from_env({ll.GUARDIAN_PID_ENV: "x"}) is None
    assert ll.Guardian.from_env({ll.GUARDIAN_PID_ENV: "1"}) is None
    assert ll.launch_id(env) == "abc123" and ll.launch_id({}) is None


class Clock:
    def __init__(self, guardian_alive=True):
        self.stops, self.value = 0, (0, "forward")
        self.guardian = ll.Guardian(os.getpid(), ll.process_start(os.getpid()))
        if not guardian_alive:
            self.guardian.start += 1

    def lifeline(self, **kw):
        return ll.Lifeline(self.guardian, grace_s=10, checkpoint_grace_s=100, request_stop=self.stop,
                           progress=lambda: self.value, parent=os.getppid(), **kw)

    def stop(self):
        self.stops += 1


def test_lost_guardian_asks_once_to_stop_then_exits_hard_without_progress():
    clock = Clock(guardian_alive=False)
    line = clock.lifeline()
    last = [None, 0.0]
    assert not line.check(0.0, last) and clock.stops == 1 and "launcher" in line.reason
    assert not line.check(5.0, last)
    clock.value = (1, "step")  # progress: the rank is on its way to its save
    assert not line.check(9.0, last)
    assert not line.check(18.0, last) and clock.stops == 1
    assert line.check(19.0, last)  # 10 s with no beat: stuck in a collective


def test_a_checkpoint_in_progress_gets_the_longer_grace():
    clock = Clock(guardian_alive=False)
    line = clock.lifeline()
    last = [None, 0.0]
    clock.value = (3, "checkpoint")
    line.check(0.0, last)
    assert not line.check(99.0, last) and line.check(100.0, last)


def test_a_live_guardian_and_parent_change_nothing():
    clock = Clock()
    line = clock.lifeline()
    assert not any(line.check(t, [None, 0.0]) for t in (0.0, 1000.0)) and clock.stops == 0
    orphan = ll.Lifeline(clock.guardian, parent=os.getppid() + 1, request_stop=clock.stop)
    assert "parent" in orphan.lost()


RANK = textwrap.dedent("""
    import os, signal, sys, time
    from trainer.lifeline import Lifeline
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    line = Lifeline.from_env(poll_s=0.1, grace_s=float(sys.argv[1]), exit_code=7)
    assert line is not None
    line.start()
    print("ready", flush=True)
    while not stop:
        time.sleep(0.05)
    if sys.argv[2] == "save":
        sys.exit(11)  # as a rank: saved at the step boundary, STOPPED_BY_SIGNAL
    while True:  # stuck (a collective whose peer died): no progress
        time.sleep(0.05)
""")
GUARDIAN = textwrap.dedent("""
    import os, subprocess, sys, time
    from trainer.lifeline import guardian_env
    # "parent": the guardian (the test) lives on, the rank's parent dies (torchrun SIGKILLed by a supervisor)
    env = {**os.environ, **guardian_env("t1", os.getppid() if sys.argv[4] == "parent" else None)}
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1], *sys.argv[2:]], env=env, start_new_session=True)
    print(child.pid, flush=True)
    time.sleep(600)
""")


@pytest.mark.parametrize("mode,who", [("save", "guardian"), ("stuck", "guardian"), ("save", "parent")])
def test_a_sigkilled_guardian_takes_its_rank_with_it(mode, who):
    """The rank is in its own session (as torchrun's workers): only the lifeline can stop it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    guardian = subprocess.Popen([sys.executable, "-c", GUARDIAN, RANK, "1.0", mode, who], env=env,
                                stdout=subprocess.PIPE, text=True)
    rank_pid = int(guardian.stdout.readline())
    try:
        time.sleep(0.5)
        assert ll.process_start(rank_pid) is not None
        guardian.send_signal(signal.SIGKILL)
        guardian.wait()
        started = time.monotonic()
        while ll.process_start(rank_pid) is not None and time.monotonic() - started < 60:
            time.sleep(0.05)
        assert ll.process_start(rank_pid) is None, "the rank outlived its guardian"
    finally:
        guardian.kill()
        guardian.wait()
        if ll.process_start(rank_pid) is not None:
            os.kill(rank_pid, signal.SIGKILL)
    # the rank is init's child now: its exit code is not ours to read; its speed is
    assert time.monotonic() - started < (10 if mode == "save" else 20)


def test_spawn_names_its_guardian_and_launch(tmp_path, monkeypatch):
    import io
    import json

    from launcher import local, ranks
    seen = []

    class FakePopen:
        def __init__(self, command, env, **kwargs):
            self.pid, self.kwargs, self.stdin = 1234 + len(seen), kwargs, io.BytesIO()
            self.stdin.close = lambda: None
            seen.append(self)

        def poll(self):
            return None

    monkeypatch.setattr(ranks.subprocess, "Popen", FakePopen)
    proc = local.spawn(tmp_path / "run", 2, launch_id="feedc0ffee12")
    orders = [json.loads(p.stdin.getvalue()) for p in seen]
    env = orders[0]["env"]
    assert env[ll.GUARDIAN_PID_ENV] == str(os.getpid()) and env[ll.LAUNCH_ID_ENV] == "feedc0ffee12"
    assert env[ll.GUARDIAN_START_ENV] == str(ll.process_start(os.getpid()))
    # one process group for the launch: the first rank leads it, the second joins it at its handover
    assert proc.launch_id == "feedc0ffee12" and all(p.kwargs["process_group"] == 0 for p in seen)
    assert proc.pid == seen[0].pid and orders[0]["pgid"] is None and orders[1]["pgid"] == seen[0].pid
    assert [o["env"]["RANK"] for o in orders] == ["0", "1"] and orders[1]["env"]["WORLD_SIZE"] == "2"
    other = local.spawn(tmp_path / "run", 2)
    assert len(other.launch_id) == 12 and json.loads(seen[-1].stdin.getvalue())["env"][ll.LAUNCH_ID_ENV] == \
        other.launch_id


def test_heartbeat_carries_the_launch(tmp_path, monkeypatch):
    import json

    from trainer.rundir import RunDir
    from trainer.telemetry import Heartbeat
    monkeypatch.setenv(ll.LAUNCH_ID_ENV, "l4unch")
    beat = Heartbeat(RunDir(tmp_path), 0)
    beat.beat("startup", 0, force=True)
    assert json.loads(beat.path.read_text())["launch"] == "l4unch" and beat.beats == 1
    monkeypatch.delenv(ll.LAUNCH_ID_ENV)
    assert "launch" not in Heartbeat(RunDir(tmp_path), 1).record("step", 0.0)
