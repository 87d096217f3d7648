"""Throughput change detection relative to the run's own noise (bigops.watchdog.detectors.throughput)."""

from __future__ import annotations

import json
import random

from bigops.watchdog.detectors.throughput import KEY, ThroughputConfig, ThroughputDetector


def series(n, level=10_000.0, noise=0.004, seed=0, start=0):
    rng = random.Random(seed)
    return [(start + i, level * (1 + rng.gauss(0, noise))) for i in range(n)]


def feed(detector, records, every=10):
    """Feed records; what a watchdog pass sees every ``every`` records: [(step, findings)]."""
    out = []
    for i, (step, value) in enumerate(records):
        detector.update(step, value)
        if i % every == every - 1:
            out.append((step, detector.current()))
    return out


def first_alarm(passes):
    return next((step for step, found in passes if any(not f.resolved for f in found)), None)


def test_a_persistent_five_percent_drop_against_tiny_noise_is_found_quickly():
    """One slow GPU, 5 % slower, step-time noise 0.4 %: the 0.7x rule never flagged it."""
    before, after = series(500, seed=1), series(500, level=9_500.0, seed=2, start=500)
    passes = feed(ThroughputDetector(), before + after)
    alarm = first_alarm(passes)
    assert alarm is not None and 500 <= alarm <= 530
    open_ = [f for _, found in passes for f in found if not f.resolved]
    assert {f.key for f in open_} == {KEY} and abs(open_[-1].evidence["drop"] - 0.05) < 0.01


def test_a_two_percent_drop_is_found_too_and_one_percent_is_not():
    two = feed(ThroughputDetector(), series(500, seed=3) + series(500, level=9_800.0, seed=4, start=500))
    assert 500 <= first_alarm(two) <= 600
    one = feed(ThroughputDetector(), series(500, seed=5) + series(1000, level=9_900.0, seed=6, start=500))
    assert first_alarm(one) is None  # below min_drop: not worth a page


def test_a_noisy_box_is_not_flagged_for_a_small_drop_but_is_for_a_halving():
    noisy = feed(ThroughputDetector(), series(500, noise=0.2, seed=7) +
                 series(1000, level=9_500.0, noise=0.2, seed=8, start=500))
    assert first_alarm(noisy) is None
    halved = feed(ThroughputDetector(), series(500, noise=0.2, seed=9) +
                  series(200, level=5_000.0, noise=0.2, seed=10, start=500))
    assert first_alarm(halved) is not None


def test_single_slow_steps_and_checkpoint_saves_never_count():
    records = series(3000, seed=11)
    records = [(s, v / 3 if s % 100 == 0 or s % 37 == 0 else v) for s, v in records]
    assert first_alarm(feed(ThroughputDetector(), records)) is None


def test_one_long_slowdown_is_one_problem_reported_every_pass_and_resolved_once():
    records = series(500, seed=12) + series(2000, level=9_000.0, seed=13, start=500) + \
        series(500, seed=14, start=2500)
    passes = feed(ThroughputDetector(ThroughputConfig(accept_after_records=10_000)), records)
    open_passes = [step for step, found in passes if any(not f.resolved for f in found)]
    assert open_passes and all(b - a == 10 for a, b in zip(open_passes, open_passes[1:]))  # every pass
    resolved = [f for _, found in passes for f in found if f.resolved]
    assert len(resolved) == 1 and "back to" in resolved[0].summary and resolved[0].step >= 2500


def test_a_stable_new_level_is_accepted_and_not_paged_forever():
    records = series(500, seed=15) + series(4000, level=8_000.0, seed=16, start=500)
    passes = feed(ThroughputDetector(ThroughputConfig(accept_after_records=1000)), records)
    resolved = [f for _, found in passes for f in found if f.resolved]
    assert len(resolved) == 1 and "accepted" in resolved[0].summary
    assert not any(not f.resolved for f in passes[-1][1])


def test_a_restarted_detector_resumes_exactly():
    records = series(600, seed=17) + series(600, level=9_400.0, seed=18, start=600)
    straight = ThroughputDetector()
    for step, value in records:
        straight.update(step, value)
    first = ThroughputDetector()
    for step, value in records[:700]:
        first.update(step, value)
    resumed = ThroughputDetector.from_json(json.loads(json.dumps(first.to_json())))
    for step, value in records[700:]:
        resumed.update(step, value)
    assert [f.as_dict() for f in resumed.current()] == [f.as_dict() for f in straight.current()]


def test_hostile_values_are_ignored():
    d = ThroughputDetector()
    for value in (None, "fast", True, float("nan"), float("inf"), -1.0, 0.0):
        d.update(1, value)
    assert d.current() == [] and len(d.raw) == 0
    assert ThroughputDetector.from_json({"raw": ["x", 1.0], "baseline": "no", "cusum": "nan"}).cusum == 0.0
