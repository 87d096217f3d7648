"""Ranks never outlive what started them: a `bigops launch` (with or without --watch) killed with SIGKILL
takes torchrun and its ranks with it, and they save on the way out (trainer.lifeline)."""

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.distributed.test_training_run import FAST, start, wait_for_step
from trainer import exitcodes
from trainer.rundir import RunDir

pytestmark = pytest.mark.distributed


def processes_of(run: Path) -> dict[int, str]:
    """Every live process whose command line names this run directory (torchrun, the ranks, the launcher)."""
    needle = str(run).encode()
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                cmdline = handle.read()
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                state = handle.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmdline and state not in (b"Z", b"X"):
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found


@pytest.mark.parametrize("watch", [False, True], ids=["launch", "launch-watch"])
def test_a_sigkilled_launcher_leaves_no_rank_behind_and_they_save(tmp_path, watch):
    run = tmp_path / "run"
    proc = start("launch", "--run-dir", run, *FAST, "--steps", 100_000,
                 *(["--watch", "--set", "watchdog.interval_s=0.5"] if watch else []))
    try:
        wait_for_step(run, 5, proc, timeout=300)
        ranks = [json.loads(p.read_text()) for p in (run / "telemetry" / "heartbeat").glob("rank-*.json")]
        assert len(ranks) == 4 and len({r.get("launch") for r in ranks}) == 1 and ranks[0].get("launch")
        assert len(processes_of(run)) >= 6  # the launcher, torchrun, 4 ranks
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        killed = time.monotonic()
        left = processes_of(run)
        while left and time.monotonic() - killed < 300:
            time.sleep(0.2)
            left = processes_of(run)
        assert not left, f"left behind after its launcher was killed: {left}"
        gone_after = time.monotonic() - killed
    finally:
        for pid in processes_of(run):
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
