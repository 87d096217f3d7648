"""Every detector against recorded series: real public loss curves (tests/fixtures/loss-curves, copied from
../shared/data with their README and licenses) and synthetic faults. Clean runs give no page; injected or
real spikes, NaNs, stalls, slowdowns and desync are found with the right evidence."""

import csv
import math
from dataclasses import replace
from collections import Counter
from pathlib import Path

import pytest

from bigops.watchdog.detectors.desync import DesyncConfig, desync_episode_start, detect_desync
from bigops.watchdog.detectors.disk import DiskUsage, detect_disk
from bigops.watchdog.detectors.grad_norm import GradNormConfig, GradNormSpikeDetector
from bigops.watchdog.detectors.hang import detect_hang
from bigops.watchdog.detectors.liveness import detect_dead_ranks
from bigops.watchdog.detectors.loss_spike import LossSpikeConfig, scan
from bigops.watchdog.detectors.nonfinite import NonFiniteDetector
from bigops.watchdog.detectors.straggler import StragglerConfig, detect_stragglers
from bigops.watchdog.detectors.throughput import detect_throughput_drop

CURVES = Path(__file__).resolve().parents[1] / "fixtures" / "loss-curves"
SHORT = LossSpikeConfig(warmup_records=0, min_history=2)  # the BigScience excerpts are a few rows each


def rows(name: str) -> list[dict]:
    with open(CURVES / name) as handle:
        return list(csv.DictReader(handle))


def segments(name: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows(name):
        out.setdefault(r["segment"], []).append(r)
    return out


def losses(records):
    return [(int(r["step"]), float(r["loss"])) for r in records if r["loss"]]


def test_long_clean_run_has_blips_but_no_spike():
    """modded-nanogpt 1.5B: 20,344 clean steps with many one-step outliers from the data."""
    findings = scan(losses(rows("modded_nanogpt_scaleup1b_ad8d7ae5.csv")))
    kinds = Counter(f.kind for f in findings)
    assert kinds["LossSpike"] == 0
    assert kinds["LossBlip"] >= 30  # seen, logged as info, never paged
    assert all(f.severity == "info" for f in findings)


def test_bloom_13b_spike_is_found_at_its_first_step():
    """Suspected (warning) at once; confirmed (critical) when still high spike_patience steps after its start.
    The excerpt ends 40 steps in (the chronicle: it took ~500 iterations to recover); one more record at
    the level the chronicle gives confirms it at the default patience of 50."""
    series = losses(segments("bigscience_tr1_13b_excerpts.csv")["1"])
    found = [f for f in scan(series, SHORT) if f.kind == "LossSpike"]
    assert [(f.step, f.severity) for f in found] == [(29050, "warning")]
    assert found[0].evidence["baseline"] == pytest.approx(2.773, abs=0.01)
    assert found[0].key == "LossSpike:0:29050" and found[0].evidence["start_step"] == 29050
    found = [f for f in scan(series + [(29100, 6.8)], SHORT) if f.kind == "LossSpike"]
    assert [(f.step, f.severity) for f in found] == [(29050, "warning"), (29050, "critical")]
    assert found[1].evidence["confirmed_step"] == 29100 and found[1].key == "LossSpike:0:29050"


def test_bloom_104b_spike_that_stays_high_is_found():
    """The excerpt covers 7 steps of a spike that stayed high: suspected at the default patience,
    confirmed with a patience the excerpt covers; with patience 0 it is critical at once."""
    series = losses(segments("bigscience_tr8b_104b_excerpts.csv")["7"])
    assert [(f.step, f.severity) for f in scan(series, SHORT) if f.kind == "LossSpike"] == [(17062, "warning")]
    found = [f for f in scan(series, replace(SHORT, spike_patience=5)) if f.kind == "LossSpike"]
    assert [(f.step, f.severity) for f in found] == [(17062, "warning"), (17062, "critical")]
    found = [f for f in scan(series, replace(SHORT, spike_patience=0)) if f.kind == "LossSpike"]
    assert [f.severity for f in found] == ["warning", "critical"] and found[0].evidence["suspected_step"] == \
        found[1].evidence["confirmed_step"]


def test_a_spike_that_recovers_within_patience_is_watched_never_critical():
    """Shaped like BLOOM's self-recovering spikes: 2.77 -> 7.3 -> 8.7, back under the bar ~30 steps later."""
    base = [(s, 2.77 + 0.01 * ((s * 7) % 5)) for s in range(200)]
    spike = [(200 + i, 7.3 if i < 10 else (8.7 if i < 15 else 4.5)) for i in range(30)]
    after = [(230 + i, 2.78 + 0.01 * ((i * 3) % 5)) for i in range(40)]
    found = scan(base + spike + after)
    assert [f.severity for f in found if f.kind == "LossSpike"] == ["warning", "info"]
    over = found[-1]
    assert over.resolved and over.key == "LossSpike:0:200" and over.evidence["outcome"] == "suspected"
    assert over.evidence["recovered_step"] == 234 and over.evidence["cost"] == 30


def test_a_normal_record_after_a_gap_never_confirms_a_spike():
    """The tr1-13B excerpt jumps from 29090 (still high) to 33240 (back at 2.72): past the patience, but the
    loss is under the bar now, so nothing is rolled back (the excerpt's last records are not a persistence)."""
    series = losses(segments("bigscience_tr1_13b_excerpts.csv")["1"]) + [(33240, 2.72)]
    assert [f.severity for f in scan(series, SHORT) if f.kind == "LossSpike" and not f.resolved] == ["warning"]


def test_a_suspected_spike_that_gets_worse_is_confirmed_at_once():
    base = [(s, 2.5 + 0.01 * ((s * 7) % 5)) for s in range(200)]
    high = [(200 + i, 4.0) for i in range(5)]
    for tail, why in (([(205, 6.0)], "past the first peak"), ([(205, float("nan"))], "non-finite loss")):
        found = [f for f in scan(base + high + tail) if f.kind == "LossSpike"]
        assert [f.severity for f in found] == ["warning", "critical"] and why in found[1].summary
        assert found[1].evidence["confirmed_step"] == 205
    from bigops.watchdog.detectors.loss_spike import LossSpikeDetector
    d = LossSpikeDetector()
    for step, loss in base + high:
        d.update(step, loss)
    assert [f.severity for f in d.update(205, 4.0, 1e6, grad_spike=True)] == ["critical"]


def test_grad_norm_explodes_before_the_loss_in_bloom_104b():
    # Two records of history only: their MAD says little, so the 10x floor decides (z lowered to let it).
    detector = GradNormSpikeDetector(GradNormConfig(warmup_records=0, min_history=2, z=3.0))
    found = []
    for r in segments("bigscience_tr8_104b_excerpts.csv")["5"]:
        found += detector.update(int(r["step"]), float(r["grad_norm"]))
    assert found[0].step == 8740 and found[0].evidence["ratio"] > 10  # 89k -> 1.49M, loss still 3.68
    assert {f.key for f in found} == {"GradNormSpike"}  # one run-level identity


def test_clean_grad_norms_stay_quiet():
    detector = GradNormSpikeDetector()
    values = [1.0 + 0.3 * math.sin(i / 7) for i in range(2000)]
    assert not [f for i, v in enumerate(values) for f in detector.update(i, v)]


def test_injected_spike_in_a_clean_run_is_found_where_injected():
    series = losses(rows("modded_nanogpt_scaleup1b_ad8d7ae5.csv"))[:3000]
    injected = [(s, loss + 3.0 if 2000 <= s < 2080 else loss) for s, loss in series]
    spikes = [f for f in scan(injected) if f.kind == "LossSpike" and not f.resolved]
    assert [(f.step, f.severity) for f in spikes] == [(2000, "warning"), (2000, "critical")]
    assert spikes[1].evidence["confirmed_step"] == 2050  # not recovered within spike_patience = 50 steps
    recovered = [f for f in scan(injected) if f.resolved]
    assert recovered and recovered[0].evidence["start_step"] == 2000 and recovered[0].key == spikes[0].key
    assert recovered[0].evidence["recovered_step"] == 2084 and recovered[0].evidence["outcome"] == "confirmed"


def test_nonfinite_and_skipped_streaks():
    d = NonFiniteDetector()
    assert d.update(1, 2.0, 1.0) == []
    first = d.update(2, math.nan, math.nan, skipped=True)
    assert first[0].kind == "NonFiniteLoss" and first[0].severity == "warning"
    d.update(3, 2.1, math.inf, skipped=True)
    third = d.update(4, 2.0, 1.0, skipped=True)
    assert third[0].severity == "critical" and third[0].evidence["streak_start"] == 2
    assert d.update(5, 2.0, 1.0) == []


def test_hang_names_the_stuck_rank_with_a_timeout_from_step_times():
    now = 10_000.0
    beats = {r: {"rank": r, "host": "n1", "pid": 100 + r, "step": 50, "phase": "step", "time": now - 2} for r in range(4)}
    beats[2] = {**beats[2], "phase": "backward", "time": now - 95}
    step_seconds = [2.0] * 100  # p95 2 s -> timeout max(60, 10 x 2) = 60 s
    found = detect_hang(beats, now, step_seconds)
    assert len(found) == 1 and found[0].evidence["stale"][0]["rank"] == 2
    assert "rank 2 (backward, step 50" in found[0].summary and not found[0].evidence["all_ranks"]
    assert detect_hang(beats, now, [20.0] * 100) == []  # slower steps: 200 s allowed
    saving = {**beats, 2: {**beats[2], "phase": "checkpoint"}}
    assert detect_hang(saving, now, step_seconds) == []  # checkpoints get their own, longer timeout
    finished = {r: {**b, "phase": "exit", "time": 0} for r, b in beats.items()}
    assert detect_hang(finished, now, step_seconds) == []


def test_throughput_clean_run_is_quiet_and_a_sustained_drop_is_found():
    series = [(int(r["step"]), float(r["tokens_per_s"])) for r in rows("modded_nanogpt_scaleup1b_ad8d7ae5.csv")
              if r["tokens_per_s"]]
    # The clean run's recurring dips are scattered slow steps (3.7 s among 1.7 s ones): no warning, at any
    # point of the run (one streaming detector, looked at every 10 records like a watchdog pass).
    from bigops.watchdog.detectors.throughput import ThroughputDetector
    stream, seen = ThroughputDetector(), []
    for i, (step, value) in enumerate(series):
        stream.update(step, value)
        if i % 10 == 0:
            seen += stream.current()
    assert seen == []
    halved = series[:5000] + [(s, v / 2) for s, v in series[5000:5030]]
    found = detect_throughput_drop(halved)
    assert found and found[0].evidence["ratio"] == pytest.approx(0.5, abs=0.05)
    steady = [(i, 100.0 + (i % 7)) for i in range(400)]
    assert detect_throughput_drop(steady) == []
    slowed = steady + [(400 + i, 50.0) for i in range(20)]
    assert detect_throughput_drop(slowed)[0].evidence["ratio"] == pytest.approx(0.5, abs=0.03)


def test_desync_and_disk():
    assert detect_desync(10, 0.0) == []
    assert detect_desync(10, 0.02)[0].kind == "TPDesync"
    assert DesyncConfig().threshold == 1e-3  # watchdog.desync_threshold's default, the one source
    assert detect_desync(10, 5e-4) == [] and detect_desync(10, 5e-4, DesyncConfig(threshold=1e-4))
    series = [(10, 0.0), (20, 0.01), (30, 0.0), (40, 0.02), (50, 0.03)]
    assert desync_episode_start(series, 1e-3) == 40 and desync_episode_start(series[:3], 1e-3) is None
    # one run-level identity: a drift that comes back after its resolve is a new incident (acted on again)
    assert detect_desync(50, 0.03, since_step=40)[0].key == "TPDesync"
    roomy = DiskUsage(total_bytes=10 * 2**40, free_bytes=5 * 2**40, total_inodes=10**6, free_inodes=5 * 10**5)
    assert detect_disk(roomy, last_checkpoint_bytes=2 * 2**40) == []
    tight = DiskUsage(total_bytes=10 * 2**40, free_bytes=3 * 2**40, total_inodes=10**6, free_inodes=10**3)
    kinds = {f.kind: f.severity for f in detect_disk(tight, last_checkpoint_bytes=2 * 2**40)}
    assert kinds == {"DiskFullSoon": "critical", "InodesLow": "warning"}


def beats_with_forward(forward: dict[int, list[float]], tp: int = 1, pp: int = 1) -> dict[int, dict]:
    """Heartbeats of a TP x PP x DP grid (ranks laid out as DeepSpeed's: TP fastest, then DP, then PP)."""
    world = len(forward)
    dp = world // (tp * pp)
    return {r: {"rank": r, "host": f"n{r // 4}", "pid": 1000 + r, "step": 40, "phase": "step", "time": 1.0,
                "stage": r // (tp * dp), "dp_rank": (r // tp) % dp, "tp": tp, "forward_s": values[-1],
                "forward_s_recent": values} for r, values in forward.items()}


def jitter(base: float, n: int = 12, seed: int = 0) -> list[float]:
    return [base * (1 + 0.1 * math.sin(seed + 1.7 * i)) for i in range(n)]


def test_straggler_clean_run_is_quiet():
    clean = beats_with_forward({r: jitter(0.40, seed=r) for r in range(8)}, pp=2)
    assert detect_stragglers(clean) == []
    # pipeline stages differ (the last has the head and the loss): compared within a stage only
    staged = beats_with_forward({r: jitter(0.40 if r < 4 else 0.90, seed=r) for r in range(8)}, pp=2)
    assert detect_stragglers(staged) == []
    # TP peers alone (TP 2 x PP 2 x DP 1): nobody to compare with, nothing said
    assert detect_stragglers(beats_with_forward({r: jitter(0.4 if r else 3.0) for r in range(4)}, tp=2, pp=2)) == []


def test_straggler_one_slow_rank_is_named_with_its_peers_median():
    times = {r: jitter(0.40, seed=r) for r in range(8)}
    times[5] = jitter(0.95, seed=5)  # stage 1 (ranks 4-7), dp_rank 1
    found = detect_stragglers(beats_with_forward(times, pp=2))
    assert len(found) == 1
    f = found[0]
    assert (f.kind, f.severity, f.key) == ("Straggler", "warning", "Straggler:n1:rank5")
    assert f.evidence["rank"] == 5 and f.evidence["host"] == "n1" and f.evidence["pid"] == 1005
    assert f.evidence["peers"] == [4, 6, 7] and f.evidence["peers_median_s"] == pytest.approx(0.40, rel=0.1)
    assert "rank 5 on n1 (pid 1005)" in f.summary and "pipeline stage 1" in f.summary and "TP group" not in f.summary
    # too few samples, or a gap under the absolute minimum: not compared
    assert detect_stragglers(beats_with_forward({**times, 5: jitter(0.95, n=3)}, pp=2)) == []
    assert detect_stragglers(beats_with_forward(times, pp=2), StragglerConfig(min_gap_s=1.0)) == []


def test_straggler_with_tp_names_the_slowest_rank_or_its_tp_group():
    times = {r: jitter(0.40, seed=r) for r in range(8)}  # TP 2 x DP 4, one stage
    times[2], times[3] = jitter(0.80, seed=2), jitter(0.85, seed=3)  # the TP group of ranks 2-3 waits together
    found = detect_stragglers(beats_with_forward(times, tp=2))
    assert len(found) == 1 and found[0].evidence["rank"] == 3 and found[0].evidence["tp_group"] == [2, 3]
    assert "(or its TP group: ranks 2, 3)" in found[0].summary


def test_ranks_not_running_only_when_nobody_ended_or_restarts_them():
    beats = {r: {"rank": r, "host": "n1", "pid": 100 + r, "step": 30, "phase": "forward", "time": 1000.0}
             for r in range(4)}
    beats[4] = {"rank": 4, "host": "n2", "pid": 101, "step": 30, "phase": "forward", "time": 1000.0}  # other host
    dead = {101, 102}

    def alive(pid):
        return pid not in dead
    found = detect_dead_ranks(beats, "n1", alive)
    assert len(found) == 1 and found[0].kind == "RanksNotRunning" and found[0].severity == "critical"
    assert [g["rank"] for g in found[0].evidence["gone"]] == [1, 2] and "rank 1 (pid 101" in found[0].summary
    assert detect_dead_ranks(beats, "n1", lambda pid: True) == []
    assert detect_dead_ranks(beats, "n1", alive, restarting=True) == []  # a supervisor owns them
    assert detect_dead_ranks(beats, "n1", alive, {"code": 0, "time": 1001.0}) == []  # finished
    failed = detect_dead_ranks(beats, "n1", alive, {"code": 1, "time": 1001.0})
    assert failed and "exit code 1 (failed)" in failed[0].summary
    stale_record = detect_dead_ranks(beats, "n1", alive, {"code": 0, "time": 10.0})  # an earlier job's
    assert stale_record and "no exit recorded" in stale_record[0].summary
    ended = {r: {**b, "phase": "exit"} for r, b in beats.items()}
    assert detect_dead_ranks(ended, "n1", lambda pid: False) == []
