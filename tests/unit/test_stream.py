"""Detectors that live as long as the run: stable incident keys, every current problem reported each pass,
and streaming state carried across passes (plain JSON) so each record is read once and an old episode is
never seen again. Each test here failed on the stateless tail re-scan with step-keyed findings."""

import json
from collections import Counter

from bigops.watchdog.detectors.gpu import detect_gpu
from bigops.watchdog.detectors.hang import detect_hang
from bigops.watchdog.detectors.loss_spike import LossSpikeConfig, LossSpikeDetector
from bigops.watchdog.scan import ScanStream, WatchConfig, scan_run
from tests.unit.test_detectors import losses, rows
from trainer.rundir import RunDir

QUIET = WatchConfig()


def append(root, records):
    path = root / "telemetry" / "metrics.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        for r in records:
            handle.write(json.dumps(r) + "\n")


def persisted(stream: ScanStream) -> ScanStream:
    """Through its saved form, as a restarted daemon would load it."""
    return ScanStream.from_json(json.loads(json.dumps(stream.to_json())))


def hung(launch=None, pid0=100):
    beats = {r: {"rank": r, "host": "n1", "pid": pid0 + r, "step": 0, "phase": "startup", "time": 0.0} for r in range(4)}
    if launch:
        for b in beats.values():
            b["launch"] = launch
    return beats


def test_a_second_hang_at_step_0_in_a_new_launch_is_a_new_key():
    first, second = detect_hang(hung("L1"), 5000.0, []), detect_hang(hung("L2"), 5000.0, [])
    assert first[0].key == "TrainingHang:L1" and second[0].key == "TrainingHang:L2"
    # no launch field (an older trainer): the pid of the lowest stale rank tells the launches apart
    old, new = detect_hang(hung(pid0=100), 5000.0, []), detect_hang(hung(pid0=200), 5000.0, [])
    assert old[0].key == "TrainingHang:pid100" and new[0].key == "TrainingHang:pid200"


def flat(steps, loss=2.0):
    return [(s, loss + 0.01 * (s % 3)) for s in steps]


def test_a_spike_recurring_after_a_replay_is_a_new_key():
    d = LossSpikeDetector(LossSpikeConfig(warmup_records=0))
    found = []
    for s, v in flat(range(0, 100)) + [(s, 6.0) for s in range(100, 110)]:
        found += d.update(s, v)
    for s, v in flat(range(90, 100)) + [(s, 6.0) for s in range(100, 110)]:  # rolled back to 90: replayed
        found += d.update(s, v)
    spikes = [f for f in found if f.kind == "LossSpike" and not f.resolved]
    assert [f.key for f in spikes] == ["LossSpike:0:100", "LossSpike:1:100"]
    over = [f for f in found if f.resolved]
    assert [f.key for f in over] == ["LossSpike:0:100"]  # the replay ended the first episode


def test_a_spike_confirmed_and_recovered_between_two_passes_gives_both_findings_in_order(tmp_path):
    run, stream = RunDir(tmp_path), ScanStream()
    append(tmp_path, [{"step": s, "loss": v} for s, v in flat(range(100))])
    findings, _ = scan_run(run, now=0.0, stream=stream)
    assert not [f for f in findings if f.kind == "LossSpike"]
    spike = [(s, 6.0) for s in range(100, 106)] + flat(range(106, 120))
    append(tmp_path, [{"step": s, "loss": v} for s, v in spike])
    findings, _ = scan_run(run, now=10.0, stream=persisted(stream))
    mine = [(f.severity, f.resolved) for f in findings if f.key == "LossSpike:0:100"]
    assert mine == [("warning", False), ("info", True)]  # suspected, recovered within spike_patience
    eager = WatchConfig(loss=LossSpikeConfig(spike_patience=0))
    run2 = RunDir(tmp_path / "eager")
    append(run2.root, [{"step": s, "loss": v} for s, v in flat(range(100))])
    stream = ScanStream(eager)
    scan_run(run2, now=0.0, config=eager, stream=stream)
    append(run2.root, [{"step": s, "loss": v} for s, v in spike])
    findings, _ = scan_run(run2, now=10.0, config=eager, stream=ScanStream.from_json(stream.to_json(), eager))
    mine = [(f.severity, f.resolved) for f in findings if f.key == "LossSpike:0:100"]
    assert mine == [("critical", False), ("info", True)]  # the pass keeps the latest state of each key


def test_an_open_spike_is_reported_on_every_pass_and_resolved_once(tmp_path):
    run, stream = RunDir(tmp_path), ScanStream()
    append(tmp_path, [{"step": s, "loss": v} for s, v in flat(range(100))] + [{"step": s, "loss": 6.0}
                                                                             for s in range(100, 106)])
    keys = []
    for now in (0.0, 10.0, 20.0):  # nothing new appended: the spike is still the problem now
        stream = persisted(stream)
        keys.append([(f.key, f.resolved) for f in scan_run(run, now=now, stream=stream)[0] if f.kind == "LossSpike"])
    assert keys == [[("LossSpike:0:100", False)]] * 3
    append(tmp_path, [{"step": s, "loss": v} for s, v in flat(range(106, 120))])
    stream = persisted(stream)
    assert [(f.key, f.resolved) for f in scan_run(run, now=30.0, stream=stream)[0] if f.kind == "LossSpike"] == \
        [("LossSpike:0:100", True)]
    stream = persisted(stream)
    assert not [f for f in scan_run(run, now=40.0, stream=stream)[0] if f.kind == "LossSpike"]


def test_an_xid_ageing_out_of_the_window_makes_no_new_key():
    def sample(t, xids):
        return {"host": "n1", "index": 0, "time": t, "uuid": "GPU-0", "xid_errors": xids}
    both = detect_gpu({"n1": [sample(1.0, [13]), sample(2.0, [79])]}, 3.0)
    later = detect_gpu({"n1": [sample(2.0, [79]), sample(3.0, [])]}, 3.5)  # the XID 13 sample is gone
    assert sorted(f.key for f in both) == ["GpuXid:n1:0:13", "GpuXid:n1:0:79"]
    assert [f.key for f in later] == ["GpuXid:n1:0:79"]
    assert {f.key: f.severity for f in both} == {"GpuXid:n1:0:13": "warning", "GpuXid:n1:0:79": "critical"}


def test_the_clean_1_5b_curve_through_a_persisted_stream_repeats_no_blip_and_pages_nothing(tmp_path):
    """modded-nanogpt: today's re-scan of a sliding tail saw 18 of its 61 blips again ~1,900 records later."""
    run, stream = RunDir(tmp_path), ScanStream()
    series = losses(rows("modded_nanogpt_scaleup1b_ad8d7ae5.csv"))
    keys = Counter()
    for i in range(0, len(series), 100):
        append(tmp_path, [{"step": s, "loss": v} for s, v in series[i:i + 100]])
        stream = persisted(stream)
        findings, facts = scan_run(run, now=float(i), stream=stream)
        assert not [f for f in findings if f.severity != "info" and f.kind in
                    ("LossSpike", "GradNormSpike", "NonFiniteLoss", "TPDesync", "ThroughputDrop")]
        keys.update(f.key for f in findings if f.kind == "LossBlip")
    assert len(keys) >= 30 and max(keys.values()) == 1
    assert facts["records"] == len(series)


def test_a_replaced_or_truncated_metrics_file_is_read_again_from_its_tail(tmp_path):
    run, stream = RunDir(tmp_path), ScanStream()
    append(tmp_path, [{"step": s, "loss": 2.0} for s in range(50)])
    scan_run(run, now=0.0, stream=stream)
    path = tmp_path / "telemetry" / "metrics.jsonl"
    path.unlink()
    append(tmp_path, [{"step": s, "loss": 2.0} for s in range(10)])
    _, facts = scan_run(run, now=1.0, stream=stream)
    assert facts["last_record"]["step"] == 9 and stream.offset == path.stat().st_size
    half = path.read_bytes() + b'{"step": 10, "lo'  # being written: left for the next pass
    path.write_bytes(half)
    scan_run(run, now=2.0, stream=stream)
    assert stream.offset == len(half) - len(b'{"step": 10, "lo')
    with open(path, "ab") as handle:
        handle.write(b'ss": 2.0}\n')
    _, facts = scan_run(run, now=3.0, stream=stream)
    assert facts["last_record"]["step"] == 10


def test_a_restarted_daemon_resumes_its_stream(tmp_path):
    from bigops.watchdog.daemon import tick
    from bigops.watchdog.state import WatchState
    run, path = RunDir(tmp_path), tmp_path / "watchdog" / "state.json"
    append(tmp_path, [{"step": s, "loss": v} for s, v in flat(range(100))] + [{"step": s, "loss": 6.0}
                                                                             for s in range(100, 106)])
    new, _ = tick(run, WatchState.load(path), now=1000.0)
    assert [f.key for f in new if f.kind == "LossSpike"] == ["LossSpike:0:100"]
    saved = WatchState.load(path).stream
    assert saved["offset"] == (tmp_path / "telemetry" / "metrics.jsonl").stat().st_size
    append(tmp_path, [{"step": s, "loss": v} for s, v in flat(range(106, 120))])
    new, facts = tick(run, WatchState.load(path), now=1010.0)  # a new process: state from disk only
    assert ("resolve", facts["notices"][0][1]) in facts["notices"] and not new
    assert WatchState.load(path).stream["loss"]["last_step"] == 119


def test_hostile_heartbeat_and_gpu_fields_are_ignored_and_counted_never_a_crash(tmp_path):
    """A heartbeat stage that is a list, a temperature "N/A", a numeric throttle_reasons, a bool pid."""
    run = RunDir(tmp_path)
    append(tmp_path, [{"step": s, "loss": 2.0} for s in range(5)])
    hb = tmp_path / "telemetry" / "heartbeat"
    hb.mkdir(parents=True)
    for r in range(4):
        beat = {"rank": r, "host": "n1", "pid": 10 + r, "step": 4, "phase": "step", "time": 100.0, "stage": 0,
                "dp_rank": r, "forward_s_recent": [0.4] * 8}
        if r == 1:
            beat["stage"] = [0, 1]
        if r == 2:
            beat["pid"] = True
        (hb / f"rank-{r:05d}.json").write_text(json.dumps(beat))
    gpu = tmp_path / "telemetry" / "gpu"
    gpu.mkdir()
    sample = {"host": "n1", "index": 0, "time": 100.0, "temperature_c": "N/A", "throttle_reasons": 4,
              "xid_errors": [79]}
    (gpu / "n1.jsonl").write_text(json.dumps(sample) + "\n")
    findings, facts = scan_run(run, now=101.0)
    bad = {f.key: f.evidence["fields"] for f in findings if f.kind == "MalformedTelemetry"}
    assert bad == {"MalformedTelemetry:heartbeat": {"pid": 1, "stage": 1},
                   "MalformedTelemetry:gpu:n1": {"temperature_c": 1, "throttle_reasons": 1}}
    assert [f.key for f in findings if f.kind == "GpuXid"] == ["GpuXid:n1:0:79"]  # the rest still read
