"""The start-up budget (trainer.startup): one rank's phase clock, rank 0's summary over ranks, its line."""

import os
import time

from trainer import startup


def test_clock_marks_each_phase_from_the_launch_and_the_process_start():
    now = [100.0]
    clock = startup.StartupClock(imported_at=100.0, clock=lambda: now[0],
                                 environ={startup.LAUNCH_TIME_ENV: repr(startup.process_start_time() - 0.25)})
    assert abs(clock.seconds["spawn"] - 0.25) < 1e-6  # launcher -> this process
    for phase, t in (("rendezvous", 101.0), ("data", 101.5), ("engine", 104.0), ("first_step", 104.5)):
        now[0] = t
        clock.mark(phase)
    assert clock.seconds["rendezvous"] == 1.0 and clock.seconds["data"] == 0.5 and clock.seconds["engine"] == 2.5
    assert clock.own()["ready"] == 104.5
    bare = startup.StartupClock(imported_at=time.time(), environ={})
    assert "spawn" not in bare.seconds  # no launcher said when it started
    assert startup.launch_time({startup.LAUNCH_TIME_ENV: "soon"}) is None


def test_process_start_time_is_this_process():
    started = startup.process_start_time()
    assert started is not None and started <= time.time()
    assert os.stat(f"/proc/{os.getpid()}").st_ctime >= started - 2  # the proc entry appears with the process


def test_summary_median_max_slowest_rank_and_total():
    ranks = [{"seconds": {"spawn": 1.0, "imports": 3.0, "engine": 4.0}, "launched": 10.0, "started": 11.0, "ready": 20.0},
             {"seconds": {"spawn": 2.0, "imports": 5.0, "engine": 3.0}, "launched": 10.0, "started": 12.0, "ready": 22.0},
             {"seconds": {"imports": 4.0, "engine": 9.0}, "launched": None, "started": 11.5, "ready": 21.0}]
    record = startup.summarize(ranks, launch="L", step=11, resumed_from="global_step10", now=23.0)
    assert record["phases"]["imports"] == {"median_s": 4.0, "max_s": 5.0, "slowest_rank": 1}
    assert record["phases"]["engine"] == {"median_s": 4.0, "max_s": 9.0, "slowest_rank": 2}
    assert record["phases"]["spawn"]["median_s"] == 1.5  # of the two ranks that measured it
    assert record["total_s"] == 12.0 and record["ranks"] == 3 and record["step"] == 11
    line = startup.describe(record)
    assert line == ("12.0 s to the first step (resumed from global_step10): spawn 2.0, imports 5.0, engine 9.0 s "
                    "(max over ranks); largest: engine (rank 2)")
