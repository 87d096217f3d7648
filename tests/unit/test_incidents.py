"""The incident layer: one page per problem, every recurrence paged, reminders bounded, resolves told."""

from __future__ import annotations

import itertools
import json

import pytest

from bigops.watchdog import incidents
from bigops.watchdog.findings import Finding
from bigops.watchdog.incidents import IncidentPolicy, advance

POLICY = IncidentPolicy(resolve_after_s=600, remind_every_s=4 * 3600)


def ids():
    counter = itertools.count()
    return lambda: f"{next(counter):012x}"


def disk(severity="critical", resolved=False):
    return Finding("DiskFullSoon", severity, "3 GiB free", key="DiskFullSoon", resolved=resolved)


def run_passes(passes, policy=POLICY, interval=60.0):
    """``passes``: one list of findings per pass; returns (table, [(time, notice type, incident id)])."""
    table, told, make = {}, [], ids()
    for n, findings in enumerate(passes):
        now = n * interval
        table, notices = advance(table, findings, now, policy, make)
        told += [(now, x.type, x.incident["id"]) for x in notices]
    return table, told


def test_a_problem_seen_every_pass_is_one_incident_one_page():
    table, told = run_passes([[disk()]] * 100)  # 100 minutes of the same full disk
    assert [t for _, t, _ in told] == ["open"]
    assert len(table) == 1 and next(iter(table.values()))["status"] == "open"


def test_the_same_disk_filling_again_a_week_later_is_paged_again():
    """Constant-key findings were reported once per run forever: a week later nobody was paged."""
    week = 7 * 24 * 60
    passes = [[disk()]] * 30 + [[]] * week + [[disk()]] * 30
    table, told = run_passes(passes, IncidentPolicy(resolve_after_s=600, remind_every_s=0))
    assert [t for _, t, _ in told] == ["open", "resolve", "open"]
    first, second = told[0][2], told[2][2]
    assert first != second and table[second]["occurrence"] == 2


def test_escalation_pages_once_and_a_worse_summary_of_the_same_severity_does_not():
    passes = [[disk("warning")]] * 5 + [[disk("critical")]] * 5 + [[disk("warning")]] * 5
    _, told = run_passes(passes)
    assert [t for _, t, _ in told] == ["open", "escalate"]


def test_the_detector_says_it_is_over_resolves_at_once_and_a_new_episode_is_a_new_incident():
    spike = Finding("LossSpike", "critical", "spike", key="LossSpike:0:100", step=100)
    over = Finding("LossSpike", "info", "back to normal", key="LossSpike:0:100", step=130, resolved=True)
    again = Finding("LossSpike", "critical", "spike after the rollback", key="LossSpike:1:100", step=100)
    _, told = run_passes([[spike], [spike], [over], [], [again]])
    assert [t for _, t, _ in told] == ["open", "resolve", "open"]
    assert told[0][2] != told[2][2]


def test_confirmed_and_recovered_between_two_passes_is_still_paged_then_resolved():
    """Only the newest finding per key was kept: a spike that confirmed and recovered between two passes
    got neither page nor rollback."""
    spike = Finding("LossSpike", "critical", "spike", key="LossSpike:0:100", step=100)
    over = Finding("LossSpike", "info", "back to normal", key="LossSpike:0:100", step=130, resolved=True)
    table, notices = advance({}, [spike, over], 0.0, POLICY)
    assert [n.type for n in notices] == ["open", "resolve"]
    assert notices[0].finding is spike and notices[0].severity == "critical"


def test_reminders_are_bounded_by_the_interval():
    day = 24 * 60  # a day of one-minute passes with the problem present
    _, told = run_passes([[disk()]] * day, IncidentPolicy(resolve_after_s=600, remind_every_s=4 * 3600))
    kinds = [t for _, t, _ in told]
    assert kinds.count("open") == 1 and kinds.count("remind") == 5  # at 4, 8, 12, 16, 20 h
    times = [t for t, kind, _ in told if kind in ("open", "remind")]
    assert all(b - a >= 4 * 3600 for a, b in zip(times, times[1:]))


def test_info_incidents_are_never_reminded():
    blip = Finding("LossBlip", "info", "blip", key="LossBlip:0:5")
    _, told = run_passes([[blip]] * (24 * 60))
    assert [t for _, t, _ in told] == ["open"]


def test_quiet_period_per_kind():
    hang = Finding("TrainingHang", "critical", "hang", key="TrainingHang:launch-a")
    policy = IncidentPolicy(resolve_after_s=3600, quiet_by_kind={"TrainingHang": 60})
    _, told = run_passes([[hang]] * 3 + [[]] * 3, policy)
    assert [t for _, t, _ in told] == ["open", "resolve"]


def test_resolve_line_says_how_long_and_what_was_done():
    table, notices = advance({}, [disk()], 0.0, POLICY)
    incident_id = notices[0].incident["id"]
    incidents.record_action(table, incident_id, "prune", "removed global_step100 (2.1 GiB)", 60.0)
    table, notices = advance(table, [], 42 * 60.0, POLICY)
    (notice,) = notices
    line = incidents.describe(notice)
    assert notice.type == "resolve" and "after 42 min" in line and "prune: removed global_step100" in line


def test_the_table_stays_bounded():
    table = {}
    for n in range(incidents.KEEP_RESOLVED + 200):
        table, _ = advance(table, [Finding("GpuXid", "warning", "x", key=f"GpuXid:h:0:{n}", resolved=False)],
                           n * 1000.0, IncidentPolicy(resolve_after_s=1))
    assert len(table) <= incidents.KEEP_RESOLVED + 1


# ----------------------------------------------------------------------------------------- through tick()
class Pager:
    """The notifier's interface, recording every page."""

    def __init__(self):
        self.channels = [type("C", (), {"name": "pager"})()]
        self.pages = []

    def wanted(self, severity):
        return severity in ("warning", "critical")

    def submit(self, event, line):
        self.pages.append(event)
        return True


@pytest.fixture
def run(tmp_path):
    from trainer.rundir import RunDir
    root = tmp_path / "run"
    (root / "telemetry").mkdir(parents=True)
    return RunDir(root)


def test_tick_pages_a_recurring_disk_problem_once_per_incident(run, monkeypatch):
    from bigops.watchdog import scan
    from bigops.watchdog.daemon import state_path, tick
    from bigops.watchdog.detectors.disk import DiskUsage
    from bigops.watchdog.state import WatchState
    free = {"bytes": 1 << 30}
    monkeypatch.setattr(scan, "disk_usage", lambda path: DiskUsage(100 << 30, free["bytes"], 10**6, 10**6))
    state, pager = WatchState.load(state_path(run)), Pager()
    now = 1_000_000.0
    for day in range(3):  # full for an hour each day, fine the rest of the day
        for minute in range(0, 24 * 60, 5):
            free["bytes"] = (1 << 30) if minute < 60 else (50 << 30)
            tick(run, state, now=now + day * 86400 + minute * 60, notifier=pager)
    opened = [p for p in pager.pages if p.get("notice") == "open"]
    resolved = [p for p in pager.pages if p.get("notice") == "resolve"]
    assert len(opened) == 3 and len(resolved) == 3
    assert len({p["incident"] for p in opened}) == 3
    events = [json.loads(line) for line in (run.root / "events.jsonl").read_text().splitlines()]
    assert [e["notice"] for e in events if e["type"] in ("finding", "incident")] == ["open", "resolve"] * 3
    # a restarted daemon (state reloaded) repeats nothing
    again = WatchState.load(state_path(run))
    assert again.incidents == state.incidents


def test_a_full_disk_under_events_jsonl_does_not_stop_the_page(run, monkeypatch):
    """events.jsonl raised before the notification was submitted: no page, and the supervisor died."""
    from bigops.watchdog import daemon, scan
    from bigops.watchdog.detectors.disk import DiskUsage
    from bigops.watchdog.state import WatchState
    import trainer.rundir

    monkeypatch.setattr(scan, "disk_usage", lambda path: DiskUsage(100 << 30, 1 << 20, 10**6, 10**6))
    real_append = trainer.rundir.append_event

    def full(run, record):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("bigops.watchdog.actions.append_event", full)
    monkeypatch.setattr(WatchState, "save", lambda self: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    state, pager = WatchState.load(daemon.state_path(run)), Pager()
    new, facts = daemon.tick(run, state, now=1000.0, notifier=pager)  # must not raise
    assert any(p["kind"] == "DiskFullSoon" for p in pager.pages)
    daemon.tick(run, state, now=1060.0, notifier=pager)
    kinds = {p["kind"] for p in pager.pages}
    assert {"WatchdogStateUnwritable", "WatchdogEventsUnwritable"} <= kinds
    monkeypatch.setattr("bigops.watchdog.actions.append_event", real_append)
    daemon.STATE_WRITE_ERRORS.clear()


def test_an_observer_writes_nothing_and_pages_nobody(run, monkeypatch):
    from bigops.watchdog import scan
    from bigops.watchdog.daemon import state_path, tick
    from bigops.watchdog.detectors.disk import DiskUsage
    from bigops.watchdog.state import WatchState
    monkeypatch.setattr(scan, "disk_usage", lambda path: DiskUsage(100 << 30, 1 << 20, 10**6, 10**6))
    state, pager = WatchState.load(state_path(run)), Pager()
    new, facts = tick(run, state, now=1000.0, notifier=pager, observe=True)
    assert [f.kind for f in new] == ["DiskFullSoon"] and facts["incidents"]
    assert pager.pages == [] and not (run.root / "events.jsonl").exists() and not state_path(run).exists()
