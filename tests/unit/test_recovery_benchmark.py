"""The recovery and watchdog-cost benchmarks' arithmetic (benchmarks/recovery_figures.py, watch_cost.py) on
hand-made run records, and the helpers that start and stop the peers: their figures can be wrong only if these
are."""

import os
import subprocess
import sys

import pytest

from benchmarks import peers, recovery, watch_cost
from datetime import datetime

from benchmarks.recovery_figures import nvrx_worker_failed, ratio, reported, resumption
from trainer import peer_heartbeat


def _steps(first: int, last: int, start: float, step_s: float = 1.0) -> list[dict]:
    return [{"step": s, "time": start + (s - first + 1) * step_s, "step_seconds": 0.5} for s in range(first, last + 1)]


def test_resumption_is_the_first_step_after_the_load_that_followed_the_fault():
    before = _steps(1, 32, 0.0)  # step 32 at t=32
    fault = 32.5
    loads = [{"kind": "save", "time": 30.9, "seconds": 0.2}, {"kind": "load", "time": 45.0, "seconds": 2.0,
                                                               "bytes": 18_000_000}]
    after = _steps(21, 25, 46.0)  # resumed from global_step20: step 21 at t=47, started at 46.5
    r = resumption(before + after, loads, fault)
    assert r["resumed_step"] == 21 and r["steps_lost"] == 32 - 20
    assert r["mttr_s"] == pytest.approx(47.0 - 0.5 - 32.5)
    assert r["load_s"] == 2.0 and r["overhead_s"] == pytest.approx(14.0 - 2.0)
    assert r["checkpoint_bytes"] == 18_000_000


def test_no_resumption_before_a_load_and_a_step_after_the_fault():
    before = _steps(1, 32, 0.0)
    assert resumption(before, [{"kind": "load", "time": 5.0, "seconds": 1.0}], 32.5) is None  # the first launch's
    assert resumption(before, [{"kind": "load", "time": 40.0, "seconds": 1.0}], 32.5) is None  # loaded, no step yet
    assert resumption(before + _steps(33, 34, 33.0), [], 32.5) is None  # steps in flight, no restart


def test_a_resumption_from_the_last_step_loses_nothing():
    before = _steps(1, 30, 0.0)
    r = resumption(before + _steps(31, 31, 40.0), [{"kind": "load", "time": 39.0, "seconds": 1.0}], 30.5)
    assert r["steps_lost"] == 0


def test_reported_is_the_first_event_of_its_kind_after_the_fault():
    events = [{"kind": "TrainingHang", "time": 5.0}, {"kind": "RankCrash", "time": 12.0},
              {"kind": "TrainingHang", "time": 21.0}, {"kind": "TrainingHang", "time": 20.0}]
    assert reported(events, "TrainingHang", 10.0) == 20.0
    assert reported(events, "RankCrash", 10.0) == 12.0
    assert reported(events, "TrainingHang", 30.0) is None


def test_nvrx_worker_failed_reads_the_agents_log_line_after_the_fault():
    log = ("[2026-12-04 20:21:26,951] [ALWAYS] [RankMonServer.Restarter] [NestedRestarter] state=initialize\n"
           "[2026-12-04 20:21:30,100] [ERROR] [ft_launcher6425@vm] failed (exitcode: 1) local_rank: 0 (pid: 1)\n"
           "[rank2]: failed (exitcode: -9)\n"
           "[2026-12-04 20:21:36,210] [ERROR] [ft_launcher6425@vm] failed (exitcode: -9) local_rank: 2 (pid: 6497)\n")
    fault = datetime(2026, 12, 4, 20, 21, 35).timestamp()
    assert nvrx_worker_failed(log, fault) == pytest.approx(fault + 1.21)
    assert nvrx_worker_failed(log, fault + 2) is None


def test_ratio_is_missing_when_a_peer_did_not_recover():
    assert ratio(5.0, 20.0) == 0.25
    assert ratio(None, 20.0) is None and ratio(5.0, None) is None and ratio(5.0, 0.0) is None


def test_watch_cost_leaves_out_the_warm_up_and_alternates():
    metrics = [{"step": 1, "tokens_per_second": 10.0}, {"step": 2, "tokens_per_second": 3000.0},
               {"step": 3, "tokens_per_second": 2000.0}, {"step": 4, "tokens_per_second": 2500.0},
               {"step": 5, "val_loss": 2.0}]
    assert watch_cost.steady_tokens_per_second(metrics, warmup_steps=1) == 2500.0
    assert watch_cost.steady_tokens_per_second(metrics, warmup_steps=4) is None
    assert watch_cost.order(3) == [True, False, False, True, True, False]


def test_peer_heartbeats_are_off_unless_asked_for():
    assert peer_heartbeat.from_env({}) is None
    assert peer_heartbeat.from_env({peer_heartbeat.ENV: "0"}) is None


def test_alive_tells_a_running_process_from_a_zombie_and_a_reaped_one():
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert peers.alive(child.pid)
    finally:
        child.stdin.close()
    assert peers.wait_until(lambda: not peers.alive(child.pid), 30)  # exited, not reaped yet: a zombie
    child.wait()
    assert not peers.alive(child.pid)
    assert peers.alive(os.getpid())


def test_an_installed_nvrx_is_not_installed_again(tmp_path, monkeypatch):
    def no_pip(*args, **kwargs):
        raise AssertionError("pip ran")
    monkeypatch.setattr(peers.subprocess, "run", no_pip)
    (tmp_path / f"nvidia_resiliency_ext-{peers.NVRX_VERSION}.dist-info").mkdir()
    assert peers.ensure_nvrx(tmp_path) == tmp_path


def test_an_unknown_peer_is_refused(tmp_path):
    with pytest.raises(ValueError, match="choose among bigops, torchrun, nvrx"):
        peers.start("slurm", tmp_path / "run", recovery._sets("tiny"), 10.0)


@pytest.mark.parametrize("module, option", [(recovery, "--hang-timeout"), (watch_cost, "--rounds")])
def test_the_benchmarks_command_lines(module, option, capsys):
    with pytest.raises(SystemExit) as exited:
        module.main(["--help"])
    assert exited.value.code == 0 and option in capsys.readouterr().out
