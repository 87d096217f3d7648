"""Ranks never outlive what started them: a `bigops launch` (with or without --watch) killed with SIGKILL
takes its ranks (and the supervisor's warm spares) with it, and the ranks save on the way out (trainer.lifeline)."""

import json
import os
import signal
import time

import pytest

from tests.distributed.test_training_run import FAST, start, wait_for_step
from tests.procguard import processes_naming, wait_gone
from trainer import exitcodes
from trainer.rundir import RunDir

pytestmark = pytest.mark.distributed


@pytest.mark.parametrize("watch", [False, True], ids=["launch", "launch-watch"])
def test_a_sigkilled_launcher_leaves_no_rank_behind_and_they_save(tmp_path, watch):
    run = tmp_path / "run"
    proc = start("launch", "--run-dir", run, *FAST, "--steps", 100_000,
                 *(["--watch", "--set", "watchdog.interval_s=0.5", "--set", "watchdog.warm_spares_after_s=0"]
                   if watch else []))
    try:
        wait_for_step(run, 5, proc, timeout=300)
        ranks = [json.loads(p.read_text()) for p in (run / "telemetry" / "heartbeat").glob("rank-*.json")]
        assert len(ranks) == 4 and len({r.get("launch") for r in ranks}) == 1 and ranks[0].get("launch")
        assert len(processes_naming(run)) >= 5  # the launcher, 4 ranks
        if watch:  # and the supervisor's spares (warming one by one once the launch trained): they go with it too
            spares = run / "watchdog" / "spares.json"
            deadline = time.monotonic() + 300
            while not (spares.exists() and len(json.loads(spares.read_text())["pids"]) >= 1):
                assert time.monotonic() < deadline and proc.poll() is None, "no spares"
                time.sleep(0.1)
            assert set(json.loads(spares.read_text())["pids"]) <= set(processes_naming(run))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        killed = time.monotonic()
        left = wait_gone(run, timeout=300)
        assert not left, f"left behind after its launcher was killed: {left}"
        gone_after = time.monotonic() - killed
    finally:
        for pid in processes_naming(run):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    record = json.loads((run / "telemetry" / "exit.json").read_text())
    assert record["code"] == exitcodes.STOPPED_BY_SIGNAL, record
    tag = RunDir(run).latest_tag()
    assert tag is not None and int(tag.removeprefix("global_step")) >= 5  # saved at the stop
    print(f"\nall of the run gone {gone_after:.1f} s after SIGKILL of `bigops launch{' --watch' if watch else ''}`, "
          f"saved {tag}")
