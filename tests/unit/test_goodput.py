"""Goodput accounting (bigops.goodput): golden synthetic records whose every second is known, the records of a
real tiny run whose rank 2 was SIGKILLed and restarted (tests/fixtures/goodput/killed-rank, written by
tests/distributed/test_watchdog_e2e.py's killed-rank run), the Young/Daly interval, and the CLI."""

import json
import math
import shutil
from pathlib import Path

import pytest

from bigops.goodput import account as acc
from bigops.goodput import facts, interval, report
from tests.distributed.test_training_run import bigops
from trainer.rundir import RunDir

FIXTURE = Path(__file__).parent.parent / "fixtures" / "goodput" / "killed-rank"


def golden_records() -> acc.Records:
    """A run on a wall clock of whole seconds (see the sums in the test below):

    0-10 first launch's start-up; steps 1-10 end at 12, 14, ... 30 (2 s each), a save [20, 21];
    steps 11-13 take 4 s each (end 34, 38, 42) while a ThroughputDrop is open [31, 43]; a save [42, 43] of
    step 13; step 14 ends at 44, then a rank crashes (RankCrash open at 45, restart at 46); SLURM: job 1 ended
    at 47, job 2 started at 49; the relaunch starts at 50, loads step 13 (load record at 55), trains step 14
    again [58, 60] and on to 20 (2 s each, ends 72); a final save [72, 74]; the record ends at 76."""
    steps = [acc.Step(k, 10 + 2 * k, 2.0) for k in range(1, 11)]
    steps += [acc.Step(11, 34, 4.0), acc.Step(12, 38, 4.0), acc.Step(13, 42, 4.0), acc.Step(14, 44, 1.0)]
    steps += [acc.Step(k, 60 + 2 * (k - 14), 2.0) for k in range(14, 21)]
    events = [
        {"time": 31, "type": "finding", "notice": "open", "incident": "slow1", "kind": "ThroughputDrop"},
        {"time": 43, "type": "incident", "notice": "resolve", "incident": "slow1", "kind": "ThroughputDrop",
         "opened": 31},
        {"time": 45, "type": "finding", "notice": "open", "incident": "crash1", "kind": "RankCrash"},
        {"time": 45.5, "type": "action", "action": "kill", "incident": "crash1"},
        {"time": 46, "type": "action", "action": "restart", "incident": "crash1", "checkpoint_step": 13},
    ]
    jobs = [{"job_id": "2", "start": 49, "end": None}, {"job_id": "1", "start": 0, "end": 47}]
    return acc.Records(steps=steps, saves=[(21, 1.0), (43, 1.0), (74, 2.0)], launches=[0, 50, 54], events=events,
                       jobs=jobs, end=76)


def test_golden_records_every_second_once():
    g = acc.account(golden_records())
    assert g.start == 0 and g.end == 76
    assert g.seconds == {"startup": 10, "productive": 39, "slow": 6, "lost": 1, "checkpoint": 4, "queue": 2,
                         "restart": 12, "stopped": 2}
    assert sum(g.seconds.values()) == g.wall_s == 76
    assert g.steps_productive == 20 and g.steps_lost == 1 and g.relaunches == 1 and g.baseline_step_s == 2
    # the timeline: disjoint, in order, no hole from start to end
    assert g.spans[0].start == 0 and g.spans[-1].end == 76
    assert all(a.end == b.start for a, b in zip(g.spans, g.spans[1:]))
    by_cause = {c.cause: c for c in g.charges}
    assert by_cause["crash1"].kind == "RankCrash" and by_cause["crash1"].steps_lost == 1
    assert by_cause["crash1"].seconds == {"lost": 1, "restart": 12, "slow": 0}
    assert by_cause["slow1"].kind == "ThroughputDrop" and by_cause["slow1"].seconds["slow"] == 6
    assert by_cause["slow1"].opened == 31


def test_a_rollback_loses_the_steps_past_its_target_even_if_never_redone():
    """Steps 1-6, a rollback to step 2, then 3-4 and the end: 3-6 of the first pass are lost."""
    steps = [acc.Step(k, k, 1.0) for k in range(1, 7)] + [acc.Step(3, 10, 1.0), acc.Step(4, 11, 1.0)]
    events = [{"time": 7, "type": "action", "action": "rollback", "incident": "spike", "kind": "LossSpike"}]
    g = acc.account(acc.Records(steps=steps, events=events))
    assert acc.productive_flags(steps) == [True, True, False, False, False, False, True, True]
    assert g.steps_lost == 4 and g.seconds["lost"] == 4
    assert g.seconds["restart"] == 3 and g.seconds["productive"] == 4  # [6, 9]: no step; steps 1, 2, 3', 4'
    assert sum(g.seconds.values()) == g.wall_s == 11
    (charge,) = g.charges
    assert charge.cause == "spike" and charge.steps_lost == 4 and charge.seconds["restart"] == 3


def test_a_planned_relaunch_is_charged_to_exit_and_is_no_failure():
    """A SLURM time-out: step 4 saved, the next job resumes at 5 (the steps follow on; the load marks it)."""
    steps = [acc.Step(k, k, 1.0) for k in range(1, 5)] + [acc.Step(k, k + 10, 1.0) for k in range(5, 8)]
    r = acc.Records(steps=steps, saves=[(4.5, 0.5)], launches=[0, 13.5])
    g = acc.account(r)
    assert g.relaunches == 1 and g.steps_lost == 0
    assert g.seconds["restart"] == 9.5 and g.seconds["checkpoint"] == 0.5  # [4.5, 14]: step 5 runs [14, 15]
    assert [c.cause for c in g.charges] == [acc.PLANNED]
    assert report.failures(g) == 0


def test_overlay_precedence_and_gaps():
    spans = acc.overlay([[acc.Span(2, 3, "checkpoint")], [acc.Span(1, 4, "productive"), acc.Span(3.5, 6, "lost")]])
    assert [(s.start, s.end, s.part) for s in spans] == [(1, 2, "productive"), (2, 3, "checkpoint"),
                                                        (3, 4, "productive"), (4, 6, "lost")]


def test_young_and_daly():
    assert interval.young(2.0, 3600.0) == pytest.approx(math.sqrt(14400.0))
    # Daly's correction: above Young's for delta << M minus the save itself, and M when delta >= 2M
    d = interval.daly(1.0, 76.0)
    assert d == pytest.approx(math.sqrt(152) * (1 + math.sqrt(1 / 152) / 3 + 1 / 152 / 9) - 1)
    assert interval.daly(10.0, 4.0) == 4.0
    a = interval.advise(failures=1, wall_s=76, save_s=1.0, step_s=2.0, configured_steps=50)
    assert a.optimal_steps == round(d / 2) == 6 and a.suggest and "train.save_interval=6" in a.reason
    assert not interval.advise(failures=1, wall_s=76, save_s=1.0, step_s=2.0, configured_steps=9).suggest
    assert interval.advise(failures=1, wall_s=76, save_s=1.0, step_s=2.0, configured_steps=2).suggest
    none = interval.advise(failures=0, wall_s=76, save_s=1.0, step_s=2.0, configured_steps=50)
    assert not none.suggest and none.optimal_steps is None and "no failure" in none.reason


def test_golden_report_lines():
    r = report.build("RUN", golden_records(), save_interval=50)
    text = report.lines(r)
    assert text[0] == "RUN  goodput 51.3% of 76.0 s wall (20 steps kept, 1 lost, 1 relaunch(es))"
    assert "biggest loss: restart overhead (12.0 s)" in text
    assert "  RankCrash (crash1): lost 1.0 s, restart 12.0 s, 1 steps lost" in text
    assert any(line.startswith("checkpoint interval: 6 steps is optimal") and "SUGGESTED" in line for line in text)
    assert report.status_line(r) == ("goodput: 51.3% productive of 76 s; largest loss restart overhead 15.8%; "
                                     "suggest train.save_interval=6")


def test_records_of_a_real_killed_rank_run():
    """Rank 2 SIGKILLed after step 12 (checkpoint every 5): steps 11 and 12 trained twice, one restart."""
    run = RunDir(FIXTURE)
    r = report.build(str(run.root), facts.read_records(run), facts.save_interval(run))
    g = r.goodput
    assert sum(g.seconds.values()) == pytest.approx(g.wall_s, abs=1e-6)
    assert g.steps_lost == 2 and g.steps_productive == 60 and g.relaunches == 1
    (crash,) = g.charges
    assert crash.kind == "RankCrash" and crash.steps_lost == 2
    second = facts.startups(run)[1]
    assert second["resumed_from"] == "global_step10" and second["step"] == 11
    # the restart overhead holds the relaunch's whole start-up budget, and little else (the kill, the decision)
    assert second["total_s"] < crash.seconds["restart"] < second["total_s"] + 2.0
    # the first launch's start-up: from its launch to where its first step would have begun at the usual step
    # time (that step's warm-up, DeepSpeed's first-call work, is start-up too)
    first = facts.startups(run)[0]
    assert g.seconds["startup"] == pytest.approx(r.goodput.spans[1].start - first["launched"], abs=1e-9)
    assert g.spans[0].part == "startup" and g.spans[1].part == "productive"
    assert g.spans[1].seconds == pytest.approx(g.baseline_step_s) and g.baseline_step_s < first_step_seconds(run)
    assert r.advice.failures == 1 and r.advice.configured_steps == 5


def test_the_first_jobs_wait_in_the_queue_counts_from_its_submission():
    """Job 1 submitted at 0, starts at 5; job 2 (submitted at 1, long before) waits from job 1's end (20) to 23;
    job 3 follows a killed job 2 (no end recorded): its wait is unknown, not guessed."""
    jobs = [{"job_id": "1", "submitted": 0, "start": 5, "end": 20}, {"job_id": "2", "submitted": 1, "start": 23},
            {"job_id": "3", "submitted": 2, "start": 40}]
    assert [(s.start, s.end, s.cause) for s in acc.queue_spans(jobs)] == [(0, 5, "1"), (20, 23, "2")]
    steps = [acc.Step(k, 5 + 2 * k, 2.0) for k in range(1, 8)]  # job 1 trains [5, 19]
    g = acc.account(acc.Records(steps=steps, jobs=jobs[:1]))
    assert g.start == 0 and g.seconds["queue"] == 5 and g.seconds["productive"] == 14


def first_step_seconds(run: RunDir) -> float:
    return facts.read_records(run).steps[0].seconds


def test_a_launch_s_first_step_warm_up_is_its_start_up_not_training():
    """Steps of 1 s; the first launch's step 1 takes 4 s, the relaunch's step 4 takes 3 s (first-call work): the
    3 s and 2 s beyond the usual step are start-up and restart, the steps themselves 1 s each."""
    steps = [acc.Step(1, 5, 4.0), acc.Step(2, 6, 1.0), acc.Step(3, 7, 1.0), acc.Step(4, 13, 3.0), acc.Step(5, 14, 1.0)]
    events = [{"time": 8, "type": "action", "action": "restart", "incident": "c"}]
    g = acc.account(acc.Records(steps=steps, launches=[0, 9], events=events))
    assert g.seconds["startup"] == 4 and g.seconds["productive"] == 5 and g.seconds["restart"] == 5
    (charge,) = g.charges
    assert charge.cause == "c" and charge.seconds["restart"] == 5


def test_cli_text_json_and_bad_input(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    out = bigops("goodput", run, "--format", "json", "--timeline")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["schema_version"] == 1 and doc["steps_lost"] == 2
    assert sum(doc["seconds"].values()) == pytest.approx(doc["wall_s"], abs=1e-6)
    assert sum(s["end"] - s["start"] for s in doc["timeline"]) == pytest.approx(doc["wall_s"], abs=1e-6)
    text = bigops("goodput", run)
    assert text.returncode == 0 and "biggest loss: restart overhead" in text.stdout
    (run / "telemetry" / "metrics.jsonl").write_text('{"step": 1, "time": "x"}\nnot json\n')
    bad = bigops("goodput", run)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "no step recorded" in bad.stderr
    missing = bigops("goodput", tmp_path / "nope")
    assert missing.returncode == 2 and "not a run directory" in missing.stderr


def test_exporter_exports_the_split_the_interval_and_the_startup(tmp_path):
    """The watchdog's exporter: bigops_goodput_seconds by part (summing to the wall), the ratio, the
    optimal interval, the last launch's start-up by phase; recomputed at most every GOODPUT_EVERY_S."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from bigops.metrics.exporter import GOODPUT_EVERY_S, RunCollector
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    collector = RunCollector("r", run_dir=run)
    collector.update({}, [], [], now=1000.0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(generate_latest(registry).decode())
               for s in family.samples}
    parts = {dict(k[1])["part"]: v for k, v in samples.items() if k[0] == "bigops_goodput_seconds"}
    expected = report.build(str(run), facts.read_records(RunDir(run)), 5).goodput
    assert set(parts) == set(acc.PARTS) and sum(parts.values()) == pytest.approx(expected.wall_s)
    assert samples[("bigops_goodput_ratio", (("run", "r"),))] == pytest.approx(expected.ratio)
    assert samples[("bigops_checkpoint_interval_optimal_steps", (("run", "r"),))] >= 1
    assert samples[("bigops_startup_seconds", (("phase", "engine"), ("run", "r")))] == pytest.approx(4.6491)
    (run / "telemetry" / "metrics.jsonl").unlink()
    collector.update({}, [], [], now=1000.0 + GOODPUT_EVERY_S / 2)  # not yet recomputed
    assert collector.goodput["goodput"] == expected.seconds
    collector.update({}, [], [], now=1000.0 + GOODPUT_EVERY_S)
    assert collector.goodput == {}  # no step any more: nothing to account, so the next tick looks again
    (run / "telemetry" / "metrics.jsonl").write_text((FIXTURE / "telemetry" / "metrics.jsonl").read_text())
    collector.update({}, [], [], now=1000.0 + GOODPUT_EVERY_S + 1)
    assert collector.goodput["goodput"] == expected.seconds


def test_soak_sums_the_rounds_and_names_the_biggest_loss():
    from tests.faults.soak import goodput_table
    g = acc.account(golden_records())
    parts = {p: 2 * v for p, v in g.seconds.items()}  # two rounds like the golden one
    causes = {"RankCrash": {"lost": 2.0, "restart": 24.0, "slow": 0.0}}
    text = goodput_table(parts, causes)
    assert text[0] == "goodput over the rounds: 51.3% of 152 s wall"
    assert "biggest loss: restart overhead (24.0 s, 15.8%)" in text
    assert "  RankCrash: lost 2.0 s, restart 24.0 s" in text


def test_a_save_inside_a_slow_step_is_a_stall_not_slowness():
    """Steps of 2 s; step 5 takes [8, 13] during a ThroughputDrop, with a 1 s save [8, 9] in it: 1 s checkpoint,
    2 s slow (4 s of its own against the usual 2), 2 s productive."""
    steps = [acc.Step(k, 2.0 * k, 2.0) for k in range(1, 5)] + [acc.Step(5, 13.0, 4.0)]
    events = [{"time": 9, "type": "finding", "notice": "open", "incident": "d", "kind": "ThroughputDrop"}]
    g = acc.account(acc.Records(steps=steps, saves=[(9.0, 1.0)], events=events, start=0.0))
    assert g.seconds["checkpoint"] == 1 and g.seconds["slow"] == 2 and g.seconds["productive"] == 10
    assert [(s.start, s.end, s.part) for s in g.spans[-3:]] == [(8, 9, "checkpoint"), (9, 11, "productive"),
                                                               (11, 13, "slow")]


def test_a_relaunch_about_no_incident_is_named_by_its_action():
    """A supervisor that takes over after the previous one was killed relaunches about no incident of the table."""
    steps = [acc.Step(k, k, 1.0) for k in range(1, 4)] + [acc.Step(3, 10, 1.0)]
    events = [{"time": 5, "type": "action", "action": "restart", "incident": "takeover:vm:923:1.0",
               "reason": "the previous watchdog (pid 923) ended without a clean exit"}]
    (charge,) = acc.account(acc.Records(steps=steps, events=events)).charges
    assert charge.kind == "restart: the previous watchdog (pid 923) ended without a clean exit"
    assert charge.opened == 5 and charge.steps_lost == 1 and charge.seconds["restart"] == 6  # [3, 9]
