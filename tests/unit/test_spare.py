"""Warm spare ranks (trainer.spare) and the launches made of them (launcher.ranks): the preload covers what a
rank imports, a spare ends with its pool, the handover protocol, and a launch's ranks behave as one process
(one group, torchrun's stop-the-rest on a failure)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from launcher import ranks
from launcher.local import free_port, rank_env
from trainer import spare

ENGINE_AFTER_PRELOAD = textwrap.dedent("""
    import json, os, sys
    from trainer import spare
    assert spare.preload() == []
    before = set(sys.modules)
    from trainer.config import RunConfig
    from trainer.engine import build_engine, setup_rank
    cfg = RunConfig()
    cfg.parallel.tp = cfg.parallel.pp = cfg.parallel.dp = 1
    engine = build_engine(setup_rank(cfg))
    print(json.dumps(sorted(set(sys.modules) - before)))
""")


def test_the_preload_covers_what_building_an_engine_imports(tmp_path):
    """After the preload, building BLOOM's DeepSpeed engine imports nothing of torch's compiler (Dynamo,
    Inductor) or of DeepSpeed: those seconds are paid by the spare, before the launch."""
    env = {**rank_env(1), "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "PYTHONPATH": os.getcwd()}
    out = subprocess.run([sys.executable, "-c", ENGINE_AFTER_PRELOAD], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    imported = json.loads(out.stdout.strip().splitlines()[-1])
    heavy = [m for m in imported if m.startswith(("torch._dynamo", "torch._inductor", "deepspeed"))]
    assert heavy == []


def wait_until(predicate, timeout_s: float = 300.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_a_pool_warms_its_spares_and_they_end_with_it(tmp_path):
    pool = ranks.SparePool(tmp_path / "run", rank_env(2), tmp_path / "spares.log")
    try:
        assert pool.fill(2) == 2 and pool.fill(2) == 0 and len(pool.pids()) == 2
        assert wait_until(lambda: pool.warm() == 2), (tmp_path / "spares.log").read_text()[-2000:]
        pids = pool.pids()
        for pid in pids:  # named as spares of the run (the supervisor finds a handed-over one as a rank)
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            assert b"trainer.spare" in cmdline and str(tmp_path / "run").encode() in cmdline
            assert os.getpgid(pid) == pid  # each leads its own group until a launch takes it
    finally:
        idle = list(pool.idle)
        pool.close()
    assert all(s.returncode == 0 for s in idle)  # its stdin closed: it ended by itself, not killed
    assert pool.pids() == set() and pool.take(2) == []


def test_the_supervisor_s_top_up_warms_one_spare_at_a_time(tmp_path):
    pool = ranks.SparePool(tmp_path / "run", rank_env(2))
    try:
        assert pool.fill(2, at_once=1) == 1 and pool.fill(2, at_once=1) == 0  # the first still warming
        assert wait_until(lambda: pool.warm() == 1)
        assert pool.fill(2, at_once=1) == 1 and len(pool.pids()) == 2
    finally:
        pool.close()


def test_only_the_importing_thread_is_lowered():
    """nice 19 and SCHED_IDLE for the spare's import thread; the thread that becomes the rank keeps its own."""
    import threading
    seen = {}

    def importer():
        spare.lower_this_thread(spare.IDLE_NICE)
        tid = threading.get_native_id()
        seen.update(policy=os.sched_getscheduler(tid), nice=os.getpriority(os.PRIO_PROCESS, tid))
    main = (os.sched_getscheduler(threading.get_native_id()), os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
    thread = threading.Thread(target=importer)
    thread.start()
    thread.join()
    assert seen == {"policy": os.SCHED_IDLE, "nice": spare.IDLE_NICE}
    assert (os.sched_getscheduler(threading.get_native_id()), os.getpriority(os.PRIO_PROCESS,
                                                                             threading.get_native_id())) == main


def end(*procs) -> None:
    """Kill and reap whatever a test started and has not ended."""
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def test_a_dead_idle_spare_is_never_handed_over(tmp_path):
    pool = ranks.SparePool(tmp_path / "run", rank_env(2))
    taken = []
    try:
        pool.fill(2)
        victim = pool.idle[0]
        end(victim)
        taken = pool.take(2)
        assert victim not in taken and len(taken) == 1
    finally:
        end(*pool.idle, *taken)
        pool.close()


def test_a_malformed_handover_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.Popen(ranks.spare_command(tmp_path / "run", 0), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=rank_env(1))
    out, err = proc.communicate(b'{"env": "not a mapping"}\n', timeout=300)
    assert proc.returncode == 2 and err.decode().strip().count("\n") == 0 and "handover" in err.decode()


def test_read_handover_and_become_rank(monkeypatch):
    import io
    assert spare.read_handover(io.StringIO("")) is None
    with pytest.raises(ValueError):
        spare.read_handover(io.StringIO("[1, 2]\n"))
    order = spare.read_handover(io.StringIO(json.dumps({"env": {"RANK": 3, "OMP_NUM_THREADS": "1"},
                                                        "argv": ["--run-dir", "r"], "pgid": None}) + "\n"))
    monkeypatch.setattr(os, "environ", dict(os.environ))
    threads = __import__("torch").get_num_threads()
    try:
        spare.become_rank(order)
        assert os.environ == {"RANK": "3", "OMP_NUM_THREADS": "1"}
        assert __import__("torch").get_num_threads() == 1
    finally:
        __import__("torch").set_num_threads(threads)


def test_the_handover_carries_torchruns_environment():
    env = ranks.rank_environment({"X": "1"}, 2, 4, 29500, "abc")
    assert {k: env[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                                "TORCHELASTIC_RUN_ID", "X")} == \
        {"RANK": "2", "LOCAL_RANK": "2", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "127.0.0.1",
         "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "abc", "X": "1"}


def test_spare_command_is_an_argument_list_with_hostile_paths_kept_whole():
    hostile = "/tmp/run dir; rm -rf ~ $(x)"
    cmd = ranks.spare_command(hostile, 19, 7)
    assert cmd[cmd.index("--run-dir") + 1] == hostile and cmd[-2:] == ["--ready-fd", "7"]


def test_a_failed_rank_stops_the_rest_and_its_code_is_the_launchs(tmp_path):
    """Like torchrun: one rank exits 3, the other (blocked) is asked to stop, and the launch's code is 3."""
    leader = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], process_group=0)
    failing = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"], process_group=leader.pid)
    group = ranks.RankGroup([leader, failing], "l1")
    try:
        assert group.pid == leader.pid
        assert group.wait(timeout=120) == 3 and leader.returncode == -signal.SIGTERM
    finally:
        end(leader, failing)


def test_signal_reaches_a_rank_outside_the_group(tmp_path):
    """A rank whose leader died before it joined stays in its own group: the launch's signal still gets it."""
    leader = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], process_group=0)
    stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], process_group=0)
    group = ranks.RankGroup([leader, stray], "l2")
    try:
        group.signal(signal.SIGKILL)
        assert group.wait(timeout=60) == -signal.SIGKILL and stray.returncode == -signal.SIGKILL
    finally:
        end(leader, stray)


def test_take_hands_over_the_warm_spares_first(tmp_path):
    class Fake:
        def __init__(self, warm):
            self.warm, self.ready, self.pid = warm, None, id(self)

        def poll(self):
            return None
    cold, warm = Fake(False), Fake(True)
    pool = ranks.SparePool(tmp_path / "run", {})
    pool.idle = [cold, warm]
    assert pool.take(1) == [warm] and pool.idle == [cold]
