"""`bigops watch --once` over a run directory built from records: findings, events.jsonl, deduplication
across daemon restarts, and malformed records skipped instead of crashing."""

import json
import time

from bigops.cli.main import main
from bigops.watchdog.daemon import tick
from bigops.watchdog.state import WatchState
from tests.unit.test_detectors import losses, segments
from trainer.rundir import RunDir


def write_run(root, records, heartbeats=()):
    telemetry = root / "telemetry"
    (telemetry / "heartbeat").mkdir(parents=True)
    with open(telemetry / "metrics.jsonl", "w") as handle:
        for r in records:
            handle.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    for beat in heartbeats:
        (telemetry / "heartbeat" / f"rank-{beat['rank']:05d}.json").write_text(json.dumps(beat))


def bloom_13b_records():
    """A steady history, then the real BLOOM tr1-13B spike (2.77 -> 7.34 -> 8.72)."""
    real = losses(segments("bigscience_tr1_13b_excerpts.csv")["1"])
    start = real[0][0] - 100 * 10
    history = [{"step": start + 10 * i, "loss": 2.78 + 0.01 * ((i * 7) % 5 - 2), "grad_norm": 1.0,
                "tokens_per_second": 94000.0, "step_seconds": 22.3, "skipped": False} for i in range(100)]
    return history + [{"step": s, "loss": v, "grad_norm": 1.0, "tokens_per_second": 94000.0, "step_seconds": 22.3,
                       "skipped": False} for s, v in real]


def test_watch_finds_a_spike_and_a_hang_and_reports_each_once(tmp_path, capsys):
    now = time.time()
    records = bloom_13b_records()
    last = records[-1]["step"]
    beats = [{"rank": r, "host": "n1", "pid": 10 + r, "step": last, "phase": "step", "time": now - 1} for r in range(4)]
    beats[3]["time"], beats[3]["phase"] = now - 3600, "backward"
    write_run(tmp_path, records[:60] + ['{"step": 1, "loss": "NaN?"', "not json", '{"step": true}', "[1,2]"]
              + records[60:], beats)
    assert main(["watch", str(tmp_path), "--once"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("[CRITICAL] LossSpike: loss spike since step 29050") for line in out)
    assert any("[CRITICAL] TrainingHang" in line and "rank 3 (backward" in line for line in out)
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert {e["kind"] for e in events} >= {"LossSpike", "TrainingHang"}
    assert all(e["runbook"] == f"runbooks/{e['kind']}.md" for e in events)

    # A restarted daemon (fresh process, state from disk) does not report them again.
    assert main(["watch", str(tmp_path), "--once"]) == 0
    assert capsys.readouterr().out == ""
    assert len((tmp_path / "events.jsonl").read_text().splitlines()) == len(events)


def test_escalation_is_reported_again(tmp_path):
    run = RunDir(tmp_path)
    base = [{"step": i, "loss": 2.0, "grad_norm": 1.0, "skipped": False} for i in range(1, 80)]
    write_run(tmp_path, base + [{"step": 80, "loss": float("nan"), "grad_norm": None, "skipped": True}])
    state = WatchState.load(tmp_path / "watchdog" / "state.json")
    first, _ = tick(run, state)
    assert [(f.kind, f.severity) for f in first] == [("NonFiniteLoss", "warning")]
    with open(run.metrics, "a") as handle:
        for step in (81, 82):
            handle.write(json.dumps({"step": step, "loss": float("nan"), "grad_norm": None, "skipped": True}) + "\n")
    second, _ = tick(run, WatchState.load(tmp_path / "watchdog" / "state.json"))
    assert [(f.kind, f.severity) for f in second] == [("NonFiniteLoss", "critical")]


def test_damaged_state_file_does_not_stop_the_watchdog(tmp_path):
    write_run(tmp_path, [{"step": 1, "loss": 2.0}])
    (tmp_path / "watchdog").mkdir()
    (tmp_path / "watchdog" / "state.json").write_text("{half")
    assert main(["watch", str(tmp_path), "--once"]) == 0
    assert (tmp_path / "watchdog" / "state.damaged").exists()


def test_status_one_screen_and_json(tmp_path, capsys):
    now = time.time()
    records = bloom_13b_records()
    write_run(tmp_path, records, [{"rank": 0, "host": "n1", "pid": 7, "step": 29090, "phase": "step", "time": now}])
    assert main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "step 29090" in out and "LossSpike" in out and "rank" in out
    assert main(["status", str(tmp_path), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["last_record"]["step"] == 29090 and data["problems"][0]["kind"] == "LossSpike"
    assert not (tmp_path / "events.jsonl").exists()  # status only reads
