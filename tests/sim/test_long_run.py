"""A month of a supervised run on a simulated clock (``tests.sim.harness``): every fault kind recurring
at Llama 3's interruption rate, a storm on day 2.5; one page per incident, every episode paged, each action
once, no critical page lost. ``python -m benchmarks.incidents --days 90`` prints the full table."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.sim.harness import KINDS, Sim, SimConfig

pytestmark = pytest.mark.sim


@pytest.fixture
def root():
    shm = Path("/dev/shm")
    path = Path(tempfile.mkdtemp(prefix="bigops-sim-", dir=shm if shm.is_dir() else None))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_month_of_recurring_faults_one_page_per_incident_none_silent(root):
    # 30 days, one watchdog pass every 10 simulated minutes (4,320 passes: about a minute here)
    report = Sim(root, SimConfig(days=30, seed=0, pass_s=600)).run_all()
    print(report.table())
    figures = report.figures()
    rows = {r["kind"]: r for r in figures["rows"]}
    assert all(rows[k]["episodes"] > 0 for k in KINDS), {k: r["episodes"] for k, r in rows.items()}
    assert report.violations() == []
    assert figures["pages_per_incident"] == 1.0
    assert figures["longest_silent_recurrence_h"] == 0 and figures["silent_episodes"] == 0
    # each restart, rollback and sync once per incident, and done for every incident that needs one
    assert rows["hang"]["actions"] == 2 * rows["hang"]["incidents"]  # kill + restart
    assert rows["spike"]["actions"] >= 3 * rows["spike"]["incidents"] - 1  # kill + rollback + restart (or give up)
    assert rows["desync"]["actions"] == rows["desync"]["incidents"]  # one sync, however long it lasts
    # the same findings keyed the old way: recurrences go silent, sliding keys flood
    assert figures["old_silent_episodes"] > 0
    assert rows["slow"]["old_pages"] > 3 * rows["slow"]["episodes"]
