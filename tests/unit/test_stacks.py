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


def test_on_slurm_one_srun_step_dumps_every_node_and_names_the_ranks_no_node_answered_for(tmp_path):
    """The SLURM side without SLURM: the command is an argument list (a run dir with blanks and quotes stays
    one argument), nodes' JSON lines are joined, a silent node's ranks are named with their host."""
    from launcher.slurm.runner import CommandError, Result

    run = RunDir(tmp_path / "run 'x' $(y)")
    run.heartbeats.mkdir(parents=True)
    for rank, host in enumerate(["node1", "node1", "node2", "node3"]):
        (run.heartbeats / f"rank-{rank}.json").write_text(json.dumps(
            {"rank": rank, "pid": 1000 + rank, "host": host, "time": time.time(), "phase": "train", "step": 3}))
    command = stacks.srun_command("42", "/opt/venv/bin/python", str(run.root), "/opt/bigops")
    assert command == ["srun", "--overlap", "--jobid=42", "--ntasks-per-node=1", "--kill-on-bad-exit=0",
                       "--chdir=/opt/bigops", "/opt/venv/bin/python", "-m", "bigops.watchdog.stacks", str(run.root)]

    class Nodes:
        def __init__(self, stdout, code=0):
            self.stdout, self.code, self.argv = stdout, code, None

        def run(self, argv, timeout=60.0, env=None):
            self.argv = argv
            return Result(self.code, self.stdout, "srun: error: Unable to create step for job 42")

    lines = "\n".join(json.dumps({"host": host, "dumps": {str(r): {"rank": r, "pid": 1000 + r, **_dump(
        ("all_reduce", "c10d.py", 9), pid=1000 + r)} for r in ranks}}) for host, ranks in
        (("node1", [0, 1]), ("node2", [2])))
    nodes = Nodes("srun: warning: something\n" + lines + "\n")
    dumps = stacks.collect_over_srun(nodes, "42", "/opt/venv/bin/python", run)
    assert nodes.argv[-1] == str(run.root) and sorted(dumps) == [0, 1, 2, 3]
    assert dumps[2]["host"] == "node2" and "threads" in dumps[2]
    assert dumps[3] == {"rank": 3, "host": "node3", "error": "no node of job 42 answered for it (host node3)"}
    assert stacks.odd_ranks(stacks.group(dumps)) == [3]
    with pytest.raises(CommandError, match="Unable to create step"):
        stacks.collect_over_srun(Nodes("", code=1), "42", "python3", run)


def test_the_node_side_prints_one_json_line_of_its_own_live_ranks(tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    run.heartbeats.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", RANK, "wait"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        here = socket.gethostname()
        beats = {0: (proc.pid, here), 1: (proc.pid, "another-node"), 2: (2 ** 22 + 7, here)}
        for rank, (pid, host) in beats.items():  # rank 1 lives elsewhere, rank 2's process is gone
            (run.heartbeats / f"rank-{rank}.json").write_text(json.dumps(
                {"rank": rank, "pid": pid, "host": host, "time": time.time(), "phase": "train", "step": 1}))
        assert stacks.node_main([str(run.root)]) == 0
    finally:
        proc.kill()
        proc.wait()
    (line,) = capsys.readouterr().out.strip().splitlines()
    node = json.loads(line)
    assert node["host"] == socket.gethostname() and list(node["dumps"]) == ["0"]
    assert "wait_in_collective" in json.dumps(node["dumps"]["0"]["threads"])
    assert stacks.node_main([]) == 2
