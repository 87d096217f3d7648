"""Hang forensics (``bigops.watchdog.stacks``, ``bigops stacks``): grouping rank stacks (pure), and real py-spy
dumps of real processes — a deadlocked one, a SIGSTOPped one and one waiting — named by how they differ."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from bigops.cli.main import main
from bigops.watchdog import stacks
from trainer.rundir import RunDir

pytestmark = pytest.mark.unit


def _dump(*frames, pid=10):
    return {"threads": [{"pid": pid, "os_thread_id": pid + 1, "frames": [{"name": "worker", "filename": "t.py",
                                                                          "line": 1}]},
                        {"pid": pid, "os_thread_id": pid, "frames": [{"name": n, "filename": f, "line": l}
                                                                     for n, f, l in frames]}]}


def test_ranks_are_grouped_by_their_main_threads_frames_and_the_odd_one_named():
    collective = [("all_reduce", "/x/distributed_c10d.py", 2501), ("train_step", "/x/train.py", 88)]
    dumps = {r: _dump(*collective, pid=100 + r) for r in (0, 1, 3)}
    dumps[2] = _dump(("forward", "/x/bloom.py", 140), ("train_step", "/x/train.py", 80), pid=102)
    dumps[4] = {"error": "py-spy did not answer within 30 s"}
    groups = stacks.group(dumps)
    assert [g.ranks for g in groups] == [(0, 1, 3), (2,), (4,)]
    assert stacks.odd_ranks(groups) == [2, 4]
    line = stacks.summary_line(groups)
    assert line == ("stacks of 5 rank(s): 3 in all_reduce (distributed_c10d.py:2501); differs: rank 2 in forward "
                    "(bloom.py:140); rank 4 in stack unreadable")
    assert stacks.summary_line(stacks.group({0: dumps[0], 1: dumps[1]})).endswith("all in all_reduce "
                                                                                   "(distributed_c10d.py:2501)")


RANK = """
import sys, threading, time
def wait_in_collective():
    print("ready", flush=True)
    time.sleep(120)
def deadlock():
    lock = threading.Lock()
    lock.acquire()
    print("ready", flush=True)
    lock.acquire()  # never returns
(deadlock if sys.argv[1] == "deadlock" else wait_in_collective)()
"""


def test_bigops_stacks_dumps_live_ranks_and_names_the_deadlocked_one(tmp_path, capsys):
    if stacks.py_spy() is None:
        pytest.fail("py-spy is a dependency of bigops: it must be installed")
    run = RunDir(tmp_path / "run")
    run.heartbeats.mkdir(parents=True)
    procs = {r: subprocess.Popen([sys.executable, "-c", RANK, "deadlock" if r == 2 else "wait"],
                                 stdout=subprocess.PIPE, text=True) for r in range(3)}
    try:
        for rank, proc in procs.items():
            assert proc.stdout.readline().strip() == "ready"  # in its frame now
            (run.heartbeats / f"rank-{rank}.json").write_text(json.dumps(
                {"rank": rank, "pid": proc.pid, "host": socket.gethostname(), "time": time.time(), "phase": "train",
                 "step": 7}))
        os.kill(procs[1].pid, signal.SIGSTOP)  # a stopped rank is read as it stands
        assert main(["stacks", str(run.root)]) == 0
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
    out = capsys.readouterr().out
    assert "differs: rank 2 in acquire" in out or "differs: rank 2 in deadlock" in out, out
    (folder,) = run.stacks.iterdir()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["odd_ranks"] == [2] and summary["groups"][0]["ranks"] == [0, 1]
    assert "wait_in_collective" in json.dumps(summary["groups"][0]["frames"])
    assert sorted(p.name for p in folder.glob("rank-*.json")) == ["rank-0.json", "rank-1.json", "rank-2.json"]


def test_no_live_rank_is_one_line(tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    assert main(["stacks", str(run.root)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no live rank" in err
