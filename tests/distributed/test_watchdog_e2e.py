"""The watchdog end to end on real local runs (4 gloo ranks, TP 2 x PP 2) under `bigops launch --watch`:
a killed rank, a stopped (hung) rank, a corrupt stretch of data that spikes the loss, a crash loop, and a
crash whose restart waits for `bigops approve` (watchdog.on_crash=ask)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bigops.watchdog.supervisor import _cmdline
from tests.distributed.test_training_run import FAST, bigops, losses, start, wait_for_step
from tests.unit.test_notify import Receiver
from trainer.rundir import read_jsonl

pytestmark = pytest.mark.distributed

WATCH = ["--watch", "--set", "watchdog.interval_s=0.5"]


def events(run):
    return read_jsonl(run / "events.jsonl")


def actions(run, kind):
    return [e for e in events(run) if e.get("type") == "action" and e["action"] == kind]


def goodput_of(run):
    """``bigops goodput RUN --format json``, its parts checked to sum to the wall time, and the steps trained."""
    out = bigops("goodput", run, "--format", "json")
    assert out.returncode == 0, out.stderr
    goodput = json.loads(out.stdout)
    assert sum(goodput["seconds"].values()) == pytest.approx(goodput["wall_s"], abs=1e-6)
    trained = [r["step"] for r in read_jsonl(run / "telemetry" / "metrics.jsonl")]
    assert goodput["steps_lost"] == len(trained) - len(set(trained))  # each redone step trained twice
    return goodput


def charges_of(goodput, kind):
    """The goodput charges of ``kind``; any other may only be slowness (a ThroughputDrop warning on a loaded
    machine is real, and costs no lost step and no restart)."""
    others = [c for c in goodput["charges"] if c["kind"] != kind]
    assert all(c["steps_lost"] == 0 and c["seconds"]["lost"] == c["seconds"]["restart"] == 0 for c in others), others
    return [c for c in goodput["charges"] if c["kind"] == kind]


def rank_pids(run):
    return {json.loads(p.read_text())["rank"]: json.loads(p.read_text())["pid"]
            for p in (run / "telemetry" / "heartbeat").glob("rank-*.json")}


def test_killed_rank_is_restarted_from_the_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    proc = start("launch", "--run-dir", run, *FAST, *WATCH, "--steps", 60, "--save-interval", 5)
    wait_for_step(run, 12, proc)
    os.kill(rank_pids(run)[2], signal.SIGKILL)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, out + err
    restarts = actions(run, "restart")
    assert len(restarts) == 1 and "crash" in restarts[0]["reason"] and restarts[0]["checkpoint_step"] >= 10
    assert max(losses(run)) == 60 and (run / "checkpoints" / "latest").read_text().strip() == "global_step60"
    # the start-up budget of both launches, and the goodput of the run: the steps past the checkpoint were redone
    first, second = read_jsonl(run / "telemetry" / "startup.jsonl")
    resumed = restarts[0]["checkpoint_step"]
    assert first["resumed_from"] is None and second["resumed_from"] == f"global_step{resumed}"
    assert second["step"] == resumed + 1 and second["ranks"] == 4 and second["total_s"] > 0
    assert set(second["phases"]) == {"spawn", "imports", "rendezvous", "data", "checkpoint", "engine", "load",
                                     "first_step"}
    goodput = goodput_of(run)
    assert goodput["relaunches"] == 1
    (crash,) = charges_of(goodput, "RankCrash")
    # the restart is charged all of the relaunch's start-up: from its launch to its first step (less that step's
    # usual time), plus the fault's own dead time before the launch
    resumed_step = next(r for r in read_jsonl(run / "telemetry" / "metrics.jsonl")
                        if r["time"] > second["launched"] and r["step"] == second["step"])
    began = resumed_step["time"] - goodput["baseline_step_s"]
    assert crash["kind"] == "RankCrash" and crash["seconds"]["restart"] > began - second["launched"] > 0


def test_stopped_rank_is_a_hang_named_then_killed_and_restarted(tmp_path):
    run = tmp_path / "run"
    proc = start("launch", "--run-dir", run, *FAST, *WATCH, "--steps", 60, "--save-interval", 5,
                 "--set", "watchdog.hang_min_timeout_s=4")
    wait_for_step(run, 12, proc)
    stopped = rank_pids(run)[1]
    os.kill(stopped, signal.SIGSTOP)
    detected_at = time.time()
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, out + err
    hangs = [e for e in events(run) if e.get("kind") == "TrainingHang"]
    assert hangs and any(s["pid"] == stopped for s in hangs[0]["evidence"]["stale"])
    assert hangs[0]["time"] - detected_at < 30  # found within seconds of the 4 s timeout
    kill = actions(run, "kill")
    assert kill and f"pid {stopped}" in kill[0]["reason"]
    (dumped,) = actions(run, "stacks")  # the evidence, taken before the kill
    order = [e["id"] for e in events(run) if e.get("type") == "action"]
    assert order.index(dumped["id"]) < order.index(kill[0]["id"])
    folder = run / dumped["folder"]
    assert sorted(p.name for p in folder.glob("rank-*.json")) == [f"rank-{r}.json" for r in range(4)]
    assert json.loads((folder / "rank-1.json").read_text())["threads"]  # the stopped rank, read as it stands
    assert actions(run, "restart") and max(losses(run)) == 60
    goodput = goodput_of(run)  # the hang's restart overhead holds at least its 4 s timeout, charged to it
    (hang,) = [c for c in goodput["charges"] if c["kind"] == "TrainingHang"]
    assert hang["seconds"]["restart"] > 4 and hang["steps_lost"] == goodput["steps_lost"]
    from trainer.rundir import pid_alive
    assert not pid_alive(stopped)  # the stopped rank did not outlive the launch (torchrun could not stop it)


def test_loss_spike_is_rolled_back_and_its_data_skipped(tmp_path):
    common = [*FAST, "--steps", 150, "--save-interval", 10, "--set", "watchdog.rollback_skip_batches=10",
              "--set", "watchdog.spike_patience=3"]  # the planted spike lasts 6 steps: roll back, do not wait
    clean = tmp_path / "clean"
    common = [str(a) for a in common]
    assert subprocess.run([sys.executable, "-m", "bigops.cli.main", "launch", "--run-dir", str(clean), *common],
                          capture_output=True, timeout=300).returncode == 0
    run = tmp_path / "spiky"
    env = {**os.environ, "BIGOPS_FAULT_CORRUPT_SAMPLES": f"{85 * 8}-{91 * 8}"}  # steps 86-91 read garbage
    proc = subprocess.run([sys.executable, "-m", "bigops.cli.main", "launch", "--run-dir", str(run), *common, *WATCH],
                          capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    spike = [e for e in events(run) if e.get("kind") == "LossSpike"]
    assert spike and spike[0]["evidence"]["start_step"] == 86
    rollback = actions(run, "rollback")
    assert len(rollback) == 1 and rollback[0]["target"] == "global_step80"
    assert rollback[0]["skip_range"] == [680, 760]
    assert "680-760" in (run / "control" / "skip-ranges").read_text()
    aside = [p.name for p in (run / "checkpoints" / ".rolled-back").glob("*/*")]  # set aside, never deleted
    assert all(int(name.removeprefix("global_step")) > 80 for name in aside)
    assert rollback[0]["outcome"].count("set aside") == 1
    final = losses(run)
    assert max(final) == 150
    goodput = goodput_of(run)  # the steps past global_step80 were trained, thrown away, trained again
    (spiked,) = charges_of(goodput, "LossSpike")
    assert spiked["kind"] == "LossSpike" and spiked["steps_lost"] == goodput["steps_lost"] > 0
    assert spiked["seconds"]["lost"] > 0 and spiked["seconds"]["restart"] > 0
    clean_final = losses(clean)[150]
    assert abs(final[150] - clean_final) / clean_final < 0.1, (final[150], clean_final)


def test_crash_loop_exhausts_the_budget_and_pages(tmp_path):
    receiver = Receiver()
    try:
        run = tmp_path / "run"
        run.mkdir()
        env = {**os.environ, "BIGOPS_FAULT_CRASH_AT_STEP": "7", "PAGER_HOOK": receiver.url + "/hook"}
        proc = subprocess.run([sys.executable, "-m", "bigops.cli.main", "launch", "--run-dir", str(run), *FAST, *WATCH,
                               "--steps", "30", "--save-interval", "3", "--set", "watchdog.restart_budget=2",
                               "--set", "alerts.webhook_env=PAGER_HOOK"],
                              capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 20, proc.stdout + proc.stderr
        assert "the watchdog stopped restarting" in proc.stderr
        assert len(actions(run, "restart")) == 2
        give_up = actions(run, "give-up")
        assert give_up and "budget exhausted" in give_up[0]["outcome"] and give_up[0]["severity"] == "critical"
        pages = [body for path, body in receiver.received if "give up" in body["text"].lower() or "GiveUp" in body["text"]]
        assert pages, receiver.received
    finally:
        receiver.close()


def test_crash_in_ask_mode_waits_for_approve_then_restarts_and_finishes(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "BIGOPS_FAULT_CRASH_AT_STEP": "7", "BIGOPS_FAULT_CRASH_ONCE": str(tmp_path / "crashed")}
    proc = subprocess.Popen([sys.executable, "-m", "bigops.cli.main", "launch", "--run-dir", str(run), *FAST, *WATCH,
                             "--steps", "12", "--save-interval", "3", "--set", "watchdog.on_crash=ask"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 180
    while not [e for e in events(run) if e.get("type") == "pending"]:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.2)
    (pending,) = [e for e in events(run) if e.get("type") == "pending"]
    assert pending["action"] == "restart" and "crash" in pending["reason"]
    time.sleep(2)
    assert proc.poll() is None and max(losses(run)) == 6  # waiting, nothing running, nothing trained
    for pid in rank_pids(run).values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    status = bigops("status", run)
    assert status.returncode == 0 and pending["approve"] in status.stdout, status.stdout + status.stderr
    approve = bigops(*pending["approve"].split()[1:])
    assert approve.returncode == 0, approve.stdout + approve.stderr
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, out + err
    restarts = actions(run, "restart")
    assert len(restarts) == 1 and restarts[0]["pending_id"] == pending["id"] and restarts[0]["checkpoint_step"] == 6
    assert max(losses(run)) == 12 and (run / "checkpoints" / "latest").read_text().strip() == "global_step12"


def test_a_lost_gpu_shrinks_the_run_to_fewer_replicas_and_it_trains_on(tmp_path):
    """watchdog.on_node_lost=shrink: GPU 1 of 2 drops off the bus (the fake NVML backend, sampled by the real
    `bigops gpu-monitor`): the DP2 ranks are killed, the newest checkpoint is reshaped to DP1 through the
    universal checkpoint, and the run trains on with one rank (stopped by its kill switch once it does)."""
    from trainer import checkpoint as ckpt
    from trainer import exitcodes
    from trainer.rundir import RunDir, load_run_config
    run = tmp_path / "run"
    proc = start("launch", "--run-dir", run, *FAST, *WATCH, "--tp", 1, "--pp", 1, "--dp", 2, "--steps", 2000,
                 "--save-interval", 5, "--set", "watchdog.on_node_lost=shrink")
    try:
        wait_for_step(run, 6, proc)
        assert bigops("gpu-monitor", run, "--fake", "2", "--once").returncode == 0  # both GPUs seen
        assert bigops("gpu-monitor", run, "--fake", "2:1=gone", "--once").returncode == 0  # GPU 1 is gone
        deadline = time.time() + 300
        while not actions(run, "restart") and time.time() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        (restart,) = actions(run, "restart")
        resumed_from = restart["checkpoint_step"]
        deadline = time.time() + 300  # training again, on the new layout (not the killed launch's records)
        while not [r for r in read_jsonl(run / "telemetry" / "metrics.jsonl")
                   if r["time"] > restart["time"] and r["step"] >= resumed_from + 2]:
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.1)
        (run / "control").mkdir(exist_ok=True)
        (run / "control" / "kill-switch").touch()
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == exitcodes.STOPPED_ON_REQUEST, out + err
    (shrink,) = actions(run, "shrink")
    assert "1 of 2 devices lost" in shrink["reason"] and "DP1" in shrink["outcome"]
    assert actions(run, "kill")
    rd = RunDir(run)
    assert load_run_config(rd).parallel.dp == 1
    universal = [t for t in ckpt.complete_tags(rd) if t.startswith("universal-")]
    assert len(universal) == 1 and ckpt.step_of(universal[0]) == resumed_from
    assert ckpt.read_manifest(rd.checkpoint(universal[0]))["topology"] == {"tp": 1, "pp": 1, "dp": 1}
    last = ckpt.read_manifest(rd.checkpoint(rd.latest_tag()))
    assert last["topology"]["dp"] == 1 and last["step"] > resumed_from
    records = read_jsonl(run / "telemetry" / "metrics.jsonl")
    assert all(r["consumed_samples"] == r["step"] * 8 for r in records)  # samples carried over the shrink
    assert [r["step"] for r in records if r["time"] > restart["time"]][0] == resumed_from + 1


def test_a_restart_takes_the_warm_spares(tmp_path):
    """Once the launch trains, the supervisor warms one spare per rank (watchdog/spares.json); after rank 2 is
    killed the relaunch's ranks ARE those spares (their pids), and the run goes on to its end. Rank 0 sleeps in
    each forward so that the spares, warming at the lowest priority, find idle CPU on a small machine."""
    run = tmp_path / "run"
    env = {**os.environ, "BIGOPS_FAULT_SLOW_RANK": "0:0.2"}
    proc = subprocess.Popen([sys.executable, "-m", "bigops.cli.main", "launch", "--run-dir", str(run), *FAST, *WATCH,
                             "--steps", "400", "--save-interval", "5", "--set", "watchdog.warm_spares_after_s=0"],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        spares_file = run / "watchdog" / "spares.json"

        def warm() -> dict | None:
            assert proc.poll() is None, proc.communicate()
            try:
                state = json.loads(spares_file.read_text())
            except (OSError, ValueError):
                return None
            return state if state["wanted"] == 4 and state["warm"] == 4 else None
        deadline = time.time() + 600
        while (state := warm()) is None:
            assert time.time() < deadline, f"spares not warm: {spares_file.read_text() if spares_file.exists() else '-'}"
            time.sleep(0.2)
        status = bigops("status", run)
        assert "warm spares for a restart: 4/4 ready" in status.stdout, status.stdout
        first_launch = {json.loads(p.read_text())["launch"] for p in (run / "telemetry" / "heartbeat").glob("rank-*.json")}
        os.kill(rank_pids(run)[2], signal.SIGKILL)

        def relaunched() -> set[int] | None:
            assert proc.poll() is None, proc.communicate()
            beats = [json.loads(p.read_text()) for p in (run / "telemetry" / "heartbeat").glob("rank-*.json")]
            new = [b for b in beats if b.get("launch") not in first_launch]
            return {b["pid"] for b in new} if len(new) == 4 else None
        deadline = time.time() + 600
        while (pids := relaunched()) is None:
            assert time.time() < deadline, "no relaunch"
            time.sleep(0.2)
        assert pids == set(state["pids"])
        (run / "control" / "kill-switch").write_text("stop\n")  # done: the ranks save and stop
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 10, out + err  # exitcodes.STOPPED_ON_REQUEST
        assert len(actions(run, "restart")) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert not [p for p in os.listdir("/proc") if p.isdigit() and b"trainer.spare" in _cmdline(int(p))
                and str(run).encode() in _cmdline(int(p))]
