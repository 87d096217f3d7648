"""Three weeks of a supervised run on a simulated clock (``tests.sim.harness``): every fault kind recurring
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


def test_weeks_of_recurring_faults_one_page_per_incident_none_silent(root):
    # 20 days, one watchdog pass every 10 simulated minutes (2,880 passes: about a minute here)
    report = Sim(root, SimConfig(days=20, seed=0, pass_s=600)).run_all()
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


def test_the_checks_catch_a_watchdog_that_never_pages_a_key_twice(root, monkeypatch):
    """The harness is not blind: an incident layer with the old dedup (a key opened once never opens again)
    leaves recurrences silent, and the checks say which."""
    from bigops.watchdog import incidents

    real, ever = incidents.advance, set()

    def old_dedup(table, findings, now, policy=incidents.IncidentPolicy(), **kw):
        findings = [f for f in findings if f.resolved or f.key not in ever or f.key in incidents.open_by_key(table)]
        table, notices = real(table, findings, now, policy, **kw)
        ever.update(n.incident["key"] for n in notices if n.type == "open")
        return table, notices

    monkeypatch.setattr(incidents, "advance", old_dedup)
    report = Sim(root, SimConfig(days=4, seed=0, pass_s=600)).run_all()
    silent = [v for v in report.violations() if v.startswith("silent:")]
    assert silent and report.figures()["silent_episodes"] == len(silent)
    assert any(v.startswith(("silent: hot", "silent: slow", "silent: crash")) for v in silent), silent
