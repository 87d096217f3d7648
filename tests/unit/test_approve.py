"""Ask mode: a pending action, `bigops approve` / `bigops deny`, and the watchdog carrying a decision out
exactly once — across restarts of the daemon and of the supervisor (with stand-in rank processes)."""

import json
import subprocess
import sys
import threading
import time

import pytest

from bigops.cli.main import main
from bigops.watchdog import approvals
from bigops.watchdog.daemon import tick
from bigops.watchdog.scan import WatchConfig
from bigops.watchdog.state import WatchState
from tests.unit.test_watch import write_run
from trainer import exitcodes
from trainer.config import RunConfig
from trainer.rundir import SYNC_LAYERNORM, RunDir, read_jsonl

ASK = WatchConfig(on_desync="ask")


def state_of(root):
    return WatchState.load(root / "watchdog" / "state.json")


def events(root, kind=None):
    return [e for e in read_jsonl(root / "events.jsonl") if kind is None or e.get("type") == kind]


def desync_run(root):
    write_run(root, [{"step": 10, "loss": 2.0, "ln_desync": 0.0}, {"step": 20, "loss": 2.0, "ln_desync": 0.01}])
    return RunDir(root)


def test_decisions_are_written_once_and_checked(tmp_path):
    run = desync_run(tmp_path)
    entry = approvals.ask(state_of(tmp_path), "sync-layernorm", "drift", now=1.0, key="TPDesync:20")
    assert approvals.waiting(run)[0]["id"] == entry["id"]
    with pytest.raises(approvals.DecisionError, match="no pending action"):
        approvals.decide(run, "abcdef123456", "approve")
    with pytest.raises(approvals.DecisionError, match="not an event id"):
        approvals.decide(run, "../../etc", "approve")
    record = approvals.decide(run, entry["id"], "approve", by="oncall@ops")
    assert record["by"] == "oncall@ops" and approvals.read_decision(run, entry["id"])["decision"] == "approve"
    for decision in ("deny", "approve"):  # the first decision wins; the others are refused
        with pytest.raises(approvals.DecisionError, match="already approved"):
            approvals.decide(run, entry["id"], decision)
    assert approvals.waiting(run) == []
    assert [e["decision"] for e in events(tmp_path, "decision")] == ["approve"]
    assert not list((tmp_path / "watchdog" / "approvals").glob(".*.tmp"))


def test_ask_waits_survives_a_daemon_restart_and_is_carried_out_once(tmp_path, capsys):
    run = desync_run(tmp_path)
    control = tmp_path / "control" / SYNC_LAYERNORM
    _, facts = tick(run, state_of(tmp_path), now=100.0, config=ASK)
    (pending,) = events(tmp_path, "pending")
    assert pending["action"] == "sync-layernorm" and pending["approve"] == \
        f"bigops approve {tmp_path.resolve()} {pending['id']}"
    assert pending["deny"].startswith("bigops deny ") and pending["approve"] in facts["actions"][0]
    for now in (110.0, 120.0):  # still waiting, also for a restarted daemon: nothing written, not asked again
        _, facts = tick(run, state_of(tmp_path), now=now, config=ASK)
        assert facts["actions"] == [] and not control.exists()
    assert len(events(tmp_path, "pending")) == 1

    assert main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "waiting for a decision" in out and pending["approve"] in out
    assert main(["status", str(tmp_path), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["pending_approvals"][0]["id"] == pending["id"]

    assert main(["approve", str(tmp_path), pending["id"], "--by", "alice"]) == 0
    assert "approved sync-layernorm" in capsys.readouterr().out
    assert main(["approve", str(tmp_path), pending["id"]]) == 2  # once only
    assert "already approved" in capsys.readouterr().err
    _, facts = tick(run, state_of(tmp_path), now=130.0, config=ASK)  # a fresh daemon picks the approval up
    assert len(facts["actions"]) == 1 and "approved by alice" in facts["actions"][0]
    assert json.loads(control.read_text())["id"] == pending["id"]
    control.unlink()  # the trainer synced
    for now in (140.0, 150.0):
        _, facts = tick(run, state_of(tmp_path), now=now, config=ASK)
        assert facts["actions"] == [] and not control.exists()
    done = [a for a in events(tmp_path, "action") if a.get("pending_id") == pending["id"]]
    assert len(done) == 1 and state_of(tmp_path).pending[pending["id"]]["status"] == "done"
    assert main(["status", str(tmp_path)]) == 0 and "waiting for a decision" not in capsys.readouterr().out


def test_an_approval_claimed_but_not_carried_out_is_finished_after_a_restart(tmp_path):
    run = desync_run(tmp_path)
    control = tmp_path / "control" / SYNC_LAYERNORM
    tick(run, state_of(tmp_path), now=100.0, config=ASK)
    (pending,) = events(tmp_path, "pending")
    approvals.decide(run, pending["id"], "approve")
    state = state_of(tmp_path)
    approvals.claim(run, state, pending["id"], 101.0)  # ... and the daemon died before acting
    assert state_of(tmp_path).pending[pending["id"]]["status"] == "approved"
    _, facts = tick(run, state_of(tmp_path), now=110.0, config=ASK)
    assert len(facts["actions"]) == 1 and control.exists()
    control.unlink()
    tick(run, state_of(tmp_path), now=120.0, config=ASK)
    assert not control.exists()


def test_deny_records_and_does_nothing(tmp_path, capsys):
    run = desync_run(tmp_path)
    tick(run, state_of(tmp_path), now=100.0, config=ASK)
    (pending,) = events(tmp_path, "pending")
    assert main(["deny", str(tmp_path), pending["id"], "--note", "known drift, syncing offline"]) == 0
    _, facts = tick(run, state_of(tmp_path), now=110.0, config=ASK)
    assert "denied by" in facts["actions"][0] and not (tmp_path / "control").exists()
    assert events(tmp_path, "decision")[0]["note"] == "known drift, syncing offline"
    assert main(["approve", str(tmp_path), pending["id"]]) == 2
    assert "already denied" in capsys.readouterr().err


# ------------------------------------------------------------------------ the supervisor, with stand-in ranks
FAKE_RANKS = """
import json, sys, time
path, code = sys.argv[1], int(sys.argv[2])
time.sleep(0.2)
open(path, "w").write(json.dumps({"code": code, "reason": "", "message": "stand-in", "rank": 0, "time": time.time()}))
sys.exit(code)
"""


def supervisor_for(tmp_path, codes, **watchdog):
    from bigops.watchdog.supervisor import Supervisor
    run = RunDir(tmp_path)
    (tmp_path / "telemetry").mkdir(exist_ok=True)
    cfg = RunConfig()
    cfg.watchdog.interval_s = 0.05
    for key, value in watchdog.items():
        setattr(cfg.watchdog, key, value)
    spawned = []

    def spawn():
        code = codes[min(len(spawned), len(codes) - 1)]
        spawned.append(code)
        return subprocess.Popen([sys.executable, "-c", FAKE_RANKS, str(run.exit_record), str(code)],
                                start_new_session=True)
    lines = []
    return Supervisor(run, cfg, spawn, say=lines.append), spawned, lines


def run_in_thread(supervisor):
    result = {}
    thread = threading.Thread(target=lambda: result.update(code=supervisor.run_until_done()), daemon=True)
    thread.start()
    return thread, result


def wait_pending(root, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        pending = approvals.waiting(RunDir(root))
        if pending:
            return pending[0]
        time.sleep(0.05)
    raise AssertionError("no pending action")


@pytest.mark.parametrize("decision", ["approve", "deny"])
def test_supervisor_asks_before_restarting_a_crash(tmp_path, decision):
    supervisor, spawned, lines = supervisor_for(tmp_path, [exitcodes.FAILED, exitcodes.FINISHED], on_crash="ask")
    thread, result = run_in_thread(supervisor)
    pending = wait_pending(tmp_path)
    assert pending["action"] == "restart" and "crash" in pending["reason"]
    time.sleep(0.5)
    assert spawned == [exitcodes.FAILED]  # nothing runs while it waits
    assert json.loads((tmp_path / "watchdog" / "supervisor.json").read_text())["pid"] > 0
    approvals.decide(RunDir(tmp_path), pending["id"], decision, by="bob")
    thread.join(30)
    assert not (tmp_path / "watchdog" / "supervisor.json").exists()
    if decision == "approve":
        assert result["code"] == exitcodes.FINISHED and spawned == [exitcodes.FAILED, exitcodes.FINISHED]
        (restart,) = [e for e in events(tmp_path, "action") if e["action"] == "restart"]
        assert restart["pending_id"] == pending["id"] and "approved by bob" in restart["outcome"]
        assert len(state_of(tmp_path).restarts) == 1
    else:
        assert result["code"] == 20 and spawned == [exitcodes.FAILED]
        assert any(e["action"] == "give-up" and "denied by bob" in e["outcome"] for e in events(tmp_path, "action"))
    assert state_of(tmp_path).pending[pending["id"]]["status"] == "done"
    assert any("approve: bigops approve" in line for line in lines)


def test_a_restarted_supervisor_waits_for_the_earlier_question_then_acts_once(tmp_path):
    # What a supervisor that died while waiting leaves behind: the pending restart, in its state.
    entry = approvals.ask(state_of(tmp_path), "restart", "crash (failed)", time.time(), kind="crash")
    supervisor, spawned, lines = supervisor_for(tmp_path, [exitcodes.FINISHED], on_crash="ask")
    thread, result = run_in_thread(supervisor)
    time.sleep(0.5)
    assert spawned == [] and any(entry["id"] in line for line in lines)  # still pending: nothing started
    approvals.decide(RunDir(tmp_path), entry["id"], "approve")
    thread.join(30)
    assert result["code"] == exitcodes.FINISHED and spawned == [exitcodes.FINISHED]
    restarts = [e for e in events(tmp_path, "action") if e["action"] == "restart"]
    assert [e["pending_id"] for e in restarts] == [entry["id"]]
    # and once more: the next supervisor has nothing left to wait for
    again, spawned, _ = supervisor_for(tmp_path, [exitcodes.FINISHED], on_crash="ask")
    assert again.run_until_done() == exitcodes.FINISHED and spawned == [exitcodes.FINISHED]
    assert len([e for e in events(tmp_path, "action") if e["action"] == "restart"]) == 1


SPIKY_RANKS = """
import json, sys, time
metrics = sys.argv[1]
with open(metrics, "a") as handle:
    for step in range(1, 131):  # from step 71 on a spike that stays: confirmed after spike_patience (50)
        loss = 8.0 if step > 70 else 2.0 + 0.01 * (step % 3)
        handle.write(json.dumps({"step": step, "loss": loss, "grad_norm": 1.0, "consumed_samples": 8 * step,
                                 "skipped": False}) + "\\n")
        handle.flush()
time.sleep(120)  # would train on past the spike: the supervisor must kill it
"""


def test_supervisor_kills_a_spike_then_rolls_back_only_when_approved(tmp_path):
    from trainer import checkpoint as ckpt
    supervisor, spawned, lines = supervisor_for(tmp_path, [exitcodes.FINISHED], on_loss_spike="ask")
    run = supervisor.run
    for step in (60, 70, 72):
        partial = ckpt.partial_dir(run, ckpt.tag_for(step))
        partial.mkdir(parents=True)
        (partial / "weights.pt").write_bytes(b"x" * step)
        ckpt.publish(run, partial, ckpt.tag_for(step), {"step": step, "consumed_samples": 8 * step})
    procs = []
    original = supervisor.spawn

    def spawn():
        if not procs:
            procs.append(subprocess.Popen([sys.executable, "-c", SPIKY_RANKS, str(run.metrics)],
                                          start_new_session=True))
            return procs[0]
        return original()
    supervisor.spawn = spawn
    thread, result = run_in_thread(supervisor)
    pending = wait_pending(tmp_path)
    assert pending["action"] == "rollback" and procs[0].poll() is not None  # killed before asking
    assert run.latest_tag() == "global_step72"  # nothing rolled back yet
    approvals.decide(run, pending["id"], "approve", by="carol")
    thread.join(30)
    assert result["code"] == exitcodes.FINISHED and spawned == [exitcodes.FINISHED]
    (rollback,) = [e for e in events(tmp_path, "action") if e["action"] == "rollback"]
    assert rollback["pending_id"] == pending["id"] and rollback["target"] == "global_step70"
    assert run.latest_tag() == "global_step70" and "approved by carol" in rollback["outcome"]
    (restart,) = [e for e in events(tmp_path, "action") if e["action"] == "restart"]
    assert restart["pending_id"] == pending["id"]


def test_a_lost_gpu_in_ask_mode_kills_the_ranks_and_a_denied_shrink_leaves_the_run_as_it_is(tmp_path):
    """watchdog.on_node_lost=ask: the ranks on the lost GPU are killed at once, the shrink waits for a person;
    denied, the supervisor stops (WATCHDOG_GAVE_UP) with run.toml and the checkpoints untouched."""
    from bigops.gpu.fake import FakeGpuBackend
    from bigops.gpu.monitor import sample_once
    from bigops.watchdog.supervisor import Supervisor
    from trainer import config as config_mod
    run = RunDir(tmp_path)
    (tmp_path / "telemetry").mkdir()
    cfg = RunConfig()
    cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.dp = 1, 1, 2
    cfg.watchdog.interval_s, cfg.watchdog.on_node_lost = 0.05, "ask"
    run.run_toml.write_text(config_mod.dumps_toml(cfg))
    toml_before = run.run_toml.read_text()
    gpus = FakeGpuBackend(2, host="node7")
    sample_once(gpus, tmp_path)  # both seen
    procs = []

    def spawn():  # ranks that would train on: the supervisor must kill them
        procs.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True))
        gpus.remove(1)
        sample_once(gpus, tmp_path)  # GPU 1 fell off the bus
        return procs[-1]
    lines = []
    supervisor = Supervisor(run, cfg, spawn, say=lines.append)
    thread, result = run_in_thread(supervisor)
    pending = wait_pending(tmp_path)
    assert pending["action"] == "shrink" and pending["details"]["target"] == [1, 1, 1]
    procs[0].wait(timeout=30)  # killed before the question: nothing runs on a lost GPU while it waits
    kill = [e for e in events(tmp_path, "action") if e["action"] == "kill"]
    assert kill and "the shrink waits for a decision" in kill[0]["outcome"]
    approvals.decide(run, pending["id"], "deny", by="carol")
    thread.join(30)
    assert result["code"] == 20 and len(procs) == 1
    assert run.run_toml.read_text() == toml_before
    assert any(e["action"] == "give-up" and "shrink denied by carol" in e["outcome"] for e in events(tmp_path, "action"))
