"""The detection benchmark's scoring (benchmarks/detection.py) on hand-made cases: its figures can be wrong
only if these are."""

from benchmarks.detection import PERSISTENT, RECOVERING, _episodes, megatron_rule, score, summarise


def test_score_counts_catches_delays_unneeded_rollbacks_and_false_alarms():
    events = [(100, PERSISTENT), (500, RECOVERING), (900, PERSISTENT)]
    part = score([103, 510, 700, 1500], events, window=200)
    assert (part["caught"], part["delays"], part["persistent"]) == (1, [3], 2)
    assert part["false_alarms"] == 1 and part["unneeded_rollbacks"] == 3  # 510, 700 (recovering), 1500 (nothing)
    assert part["recovering_rolled_back"] == 1
    s = summarise(part)
    assert s["recall"] == 0.5 and s["precision"] == 0.25 and s["median_delay_steps"] == 3


def test_episodes_and_the_megatron_rule():
    assert _episodes([(1, True), (2, True), (3, False), (4, True)], rearm=2) == [1]
    assert _episodes([(1, True), (2, False), (3, False), (4, True)], rearm=2) == [1, 4]
    series = [(i, 2.0) for i in range(100)] + [(100, 19.0), (101, 25.0), (102, 2.0)]
    assert megatron_rule(series) == [101]  # above 10 x max(first 100) = 20
