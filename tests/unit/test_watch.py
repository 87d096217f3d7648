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
    # The chronicle: it took ~500 iterations to recover; still high 50 steps in, it is confirmed.
    real += [(real[-1][0] + 10 * i, 6.8 - 0.1 * i) for i in range(1, 3)]
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
    write_run(tmp_path, records, [{"rank": 0, "host": "n1", "pid": 7, "step": 29110, "phase": "step", "time": now}])
    assert main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "step 29110" in out and "LossSpike" in out and "rank" in out
    assert main(["status", str(tmp_path), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["last_record"]["step"] == 29110 and data["problems"][0]["kind"] == "LossSpike"
    assert not (tmp_path / "events.jsonl").exists()  # status only reads


def test_heartbeat_times_training_forwards_and_the_slow_rank_fault(tmp_path, monkeypatch):
    import torch

    from trainer.rundir import read_heartbeats
    from trainer.telemetry import Heartbeat
    monkeypatch.setenv("BIGOPS_FAULT_SLOW_RANK", "1:0.02,3:0.5")
    run = RunDir(tmp_path)
    beats = {rank: Heartbeat(run, rank, min_interval_s=0.0, stage=0, dp_rank=rank, tp=1) for rank in (0, 1)}
    for hb in beats.values():
        module = torch.nn.Linear(4, 4)
        hb.attach(module)
        for step in range(1, 7):
            for _ in range(2):  # two micro-batches
                module(torch.zeros(1, 4, requires_grad=True)).sum().backward()
            hb.beat("step", step, force=True)
        module.eval()
        with torch.no_grad():
            module(torch.zeros(1, 4))  # evaluation: not part of a training step's timing, never slowed
        hb.beat("step", 6, force=True)
    read = read_heartbeats(run)
    assert read[1]["forward_calls"] == 2 and read[1]["forward_s"] >= 0.04 and len(read[1]["forward_s_recent"]) == 6
    assert read[0]["forward_s"] < 0.02 and (read[0]["stage"], read[0]["dp_rank"], read[0]["tp"]) == (0, 0, 1)
    from bigops.watchdog.detectors.straggler import StragglerConfig, detect_stragglers
    found = detect_stragglers(read, StragglerConfig(min_gap_s=0.02))
    assert [f.evidence["rank"] for f in found] == [1]


def test_desync_requests_one_live_sync_per_episode(tmp_path):
    from trainer.rundir import SYNC_LAYERNORM
    run = RunDir(tmp_path)
    records = [{"step": s, "loss": 2.0, "ln_desync": 0.0} for s in range(10, 60, 10)]
    records += [{"step": 60, "loss": 2.0, "ln_desync": 0.004}, {"step": 70, "loss": 2.0, "ln_desync": 0.006}]
    write_run(tmp_path, records)
    control = tmp_path / "control" / SYNC_LAYERNORM
    new, facts = tick(run, WatchState.load(tmp_path / "watchdog" / "state.json"), now=1000.0)
    assert [f.key for f in new] == ["TPDesync"] and len(facts["actions"]) == 1
    request = json.loads(control.read_text())
    assert request["time"] == 1000.0 and request["step"] == 70 and request["id"]
    actions = [e for e in map(json.loads, (tmp_path / "events.jsonl").read_text().splitlines()) if e["type"] == "action"]
    assert [(a["action"], a["key"], a["request_id"]) for a in actions] == [("sync-layernorm", "TPDesync", request["id"])]
    control.unlink()  # the trainer honoured it
    for _ in range(2):  # later passes, and a restarted daemon: the same episode is not synced twice
        _, facts = tick(run, WatchState.load(tmp_path / "watchdog" / "state.json"), now=1010.0)
        assert facts["actions"] == [] and not control.exists()
    with open(run.metrics, "a") as handle:  # in sync again, then a new drift
        for step, value in ((80, 0.0), (90, 0.01)):
            handle.write(json.dumps({"step": step, "loss": 2.0, "ln_desync": value}) + "\n")
    _, facts = tick(run, WatchState.load(tmp_path / "watchdog" / "state.json"), now=1020.0)
    assert len(facts["actions"]) == 1 and json.loads(control.read_text())["time"] == 1020.0


def test_desync_notify_and_dry_run_write_nothing(tmp_path):
    from bigops.watchdog.scan import WatchConfig
    run = RunDir(tmp_path)
    write_run(tmp_path, [{"step": 10, "loss": 2.0, "ln_desync": 0.5}])
    state = WatchState.load(tmp_path / "watchdog" / "state.json")
    new, facts = tick(run, state, config=WatchConfig(on_desync="notify"))
    assert new and facts["actions"] == []
    _, facts = tick(run, state, dry_run=True)
    assert "dry-run" in facts["actions"][0] and not (tmp_path / "control").exists()


def test_standalone_watch_reports_ranks_that_are_gone(tmp_path, capsys):
    import os
    import socket
    import subprocess
    import sys
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    now = time.time()
    beats = [{"rank": r, "host": socket.gethostname(), "pid": os.getpid() if r else gone.pid, "step": 12,
              "phase": "forward", "time": now - 1} for r in range(2)]
    write_run(tmp_path, [{"step": 12, "loss": 2.0}], beats)
    (tmp_path / "watchdog").mkdir()
    supervisor = tmp_path / "watchdog" / "supervisor.json"
    supervisor.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": now}))
    assert main(["watch", str(tmp_path), "--once"]) == 0
    assert "RanksNotRunning" not in capsys.readouterr().out  # a live supervisor restarts its own ranks
    supervisor.write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "started": now}))
    assert main(["watch", str(tmp_path), "--once"]) == 0
    out = capsys.readouterr().out
    assert f"[CRITICAL] RanksNotRunning: 1 rank(s) on {socket.gethostname()} not running: rank 0 (pid {gone.pid}" in out
    (tmp_path / "telemetry" / "exit.json").write_text(json.dumps({"code": 0, "time": now}))
    (tmp_path / "watchdog" / "state.json").unlink()
    assert main(["watch", str(tmp_path), "--once"]) == 0
    assert "RanksNotRunning" not in capsys.readouterr().out  # it finished


def test_exporter_shows_forward_seconds_and_pending_approvals(tmp_path):
    from prometheus_client import CollectorRegistry, generate_latest

    from bigops.metrics.exporter import RunCollector
    from bigops.watchdog.scan import WatchConfig
    run = RunDir(tmp_path)
    beat = {"rank": 0, "host": "n1", "pid": 1, "step": 20, "phase": "step", "time": time.time(), "forward_s": 0.25}
    write_run(tmp_path, [{"step": 20, "loss": 2.0, "ln_desync": 0.5}], [beat])
    collector = RunCollector("r")
    new, facts = tick(run, WatchState.load(tmp_path / "watchdog" / "state.json"), config=WatchConfig(on_desync="ask"))
    collector.update(facts, facts["findings"], new, time.time())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    assert 'bigops_rank_forward_seconds{rank="0",run="r"} 0.25' in text
    assert 'bigops_watchdog_pending_approvals{run="r"} 1.0' in text


def test_watch_waits_the_runs_interval_unless_told(tmp_path, monkeypatch):
    """`--interval` defaults to the run's `watchdog.interval_s` (one declaration of the knob)."""
    import bigops.watchdog.daemon as daemon
    write_run(tmp_path, [{"step": i, "loss": 2.0, "grad_norm": 1.0, "skipped": False} for i in range(1, 5)])
    (tmp_path / "run.toml").write_text("[watchdog]\ninterval_s = 2.5\n")
    waits = []

    def sleep(seconds):
        waits.append(seconds)
        raise KeyboardInterrupt  # ends the loop after its first pass, as Ctrl-C would

    monkeypatch.setattr(daemon.time, "sleep", sleep)
    assert main(["watch", str(tmp_path)]) != 0
    assert main(["watch", str(tmp_path), "--interval", "7"]) != 0
    assert waits == [2.5, 7.0]
