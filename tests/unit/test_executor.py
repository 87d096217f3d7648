"""The issue's "lost or repeated" defects, each driven through the real Supervisor / chain keeper with stand-in
ranks (regression tests: each fails on the code before the executor)."""

import json
import socket
import subprocess
import sys
import time

import pytest

from bigops.watchdog.state import WatchState
from tests.unit.test_approve import SPIKY_RANKS, events, state_of, supervisor_for
from trainer import checkpoint as ckpt
from trainer import exitcodes
from trainer.rundir import RunDir

GAVE_UP = 20


class Killed(BaseException):
    """The watchdog process dies here (not an Exception: nothing on the way may catch it)."""


def publish(run, *steps):
    for step in steps:
        partial = ckpt.partial_dir(run, ckpt.tag_for(step))
        partial.mkdir(parents=True)
        (partial / "weights.pt").write_bytes(bytes([step % 256]) * (100 + step))
        ckpt.publish(run, partial, ckpt.tag_for(step), {"step": step, "consumed_samples": 8 * step})


def spiky_first(supervisor):
    """The first launch writes a steady loss then a spike at step 71 and would train on; later ones: FAKE."""
    run, procs, original = supervisor.run, [], supervisor.spawn

    def spawn():
        if not procs:
            procs.append(subprocess.Popen([sys.executable, "-c", SPIKY_RANKS, str(run.metrics)],
                                          start_new_session=True))
            return procs[0]
        return original()
    supervisor.spawn = spawn
    return procs


def test_a_rollback_killed_before_its_skip_range_is_written_completes_after_a_restart(tmp_path, monkeypatch):
    from trainer import rundir
    supervisor, _, _ = supervisor_for(tmp_path, [exitcodes.FINISHED], rollback_skip_batches=2)
    gbs = supervisor.cfg.train.global_batch_size
    run = supervisor.run
    publish(run, 60, 70, 72)
    procs = spiky_first(supervisor)
    real = rundir.files.atomic_write  # the atomic writes of the contract (atomic_write_text too)

    def dying(path, write):
        if path.name == "skip-ranges":
            raise Killed()
        return real(path, write)
    monkeypatch.setattr(rundir.files, "atomic_write", dying)
    with pytest.raises(Killed):
        supervisor.run_until_done()
    assert procs[0].poll() is not None
    monkeypatch.setattr(rundir.files, "atomic_write", real)

    again, spawned, _ = supervisor_for(tmp_path, [exitcodes.FINISHED], rollback_skip_batches=2)
    assert again.run_until_done() == exitcodes.FINISHED
    skip = (tmp_path / "control" / "skip-ranges").read_text()
    assert skip.count(f"560-{560 + 2 * gbs}") == 1, skip  # target global_step70: consumed 560, 2 batches
    assert run.latest_tag() == "global_step70" and not ckpt.verify(run.checkpoint("global_step70"))
    assert list((run.checkpoints / ".rolled-back").glob("*/global_step72"))
    assert len([e for e in events(tmp_path, "action") if e["action"] == "rollback"]) == 1


def test_gave_up_after_a_spike_stops_and_nothing_restarts(tmp_path):
    supervisor, spawned, _ = supervisor_for(tmp_path, [exitcodes.FINISHED])
    publish(supervisor.run, 72)  # after the spike's first step: nothing to roll back to
    spiky_first(supervisor)
    assert supervisor.run_until_done() == GAVE_UP
    assert spawned == []  # the stand-in FINISHED launch never started
    actions = [e["action"] for e in events(tmp_path, "action")]
    assert "give-up" in actions and "restart" not in actions


HUNG_RANK = """
import json, os, socket, sys, time
beat = {"rank": 0, "host": socket.gethostname(), "pid": os.getpid(), "step": 5, "phase": "backward",
        "time": time.time()}
open(sys.argv[1], "w").write(json.dumps(beat))
time.sleep(4)  # stuck past the hang timeout, then it goes on and finishes by itself
open(sys.argv[2], "w").write(json.dumps({"code": 0, "reason": "", "message": "done", "rank": 0, "time": time.time()}))
"""


def test_notify_mode_never_kills_a_hung_rank(tmp_path):
    supervisor, _, _ = supervisor_for(tmp_path, [exitcodes.FINISHED], on_crash="notify", hang_min_timeout_s=0.5,
                                      hang_startup_timeout_s=0.5)
    run = supervisor.run
    (tmp_path / "telemetry" / "heartbeat").mkdir(parents=True)
    procs = []

    def spawn():
        procs.append(subprocess.Popen([sys.executable, "-c", HUNG_RANK,
                                       str(tmp_path / "telemetry" / "heartbeat" / "rank-00000.json"),
                                       str(run.exit_record)], start_new_session=True))
        return procs[-1]
    supervisor.spawn = spawn
    assert supervisor.run_until_done() == exitcodes.FINISHED
    assert len(procs) == 1 and procs[0].returncode == 0  # it was left alone (for py-spy) and finished
    assert any(e.get("kind") == "TrainingHang" for e in events(tmp_path, "finding"))
    assert not [e for e in events(tmp_path, "action") if e["action"] == "kill"]


def test_a_taking_over_supervisors_restart_counts_in_the_budget(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / "watchdog").mkdir()
    (tmp_path / "watchdog" / "supervisor.json").write_text(json.dumps(
        {"pid": gone.pid, "host": socket.gethostname(), "started": time.time() - 60}))
    supervisor, spawned, _ = supervisor_for(tmp_path, [exitcodes.FINISHED])
    assert supervisor.run_until_done() == exitcodes.FINISHED
    (restart,) = state_of(tmp_path).restarts
    assert "previous watchdog" in restart["reason"]
    assert len([e for e in events(tmp_path, "action") if e["action"] == "restart"]) == 1


# ---------------------------------------------------------------------------------------- the chain keeper
class FakeSlurm:
    """squeue answers with the given jobs; scontrol / sbatch are counted."""

    def __init__(self, queued):
        import collections
        self.calls, self.queued, self.argvs = collections.Counter(), queued, []

    def run(self, argv, timeout=60.0, env=None):
        from launcher.slurm.runner import Result
        name = argv[0].rsplit("/", 1)[-1]
        self.calls[name] += 1
        self.argvs.append(list(argv))
        if name == "squeue":
            return Result(0, "".join(f"{j}|PENDING|None|(null)|c\n" for j in self.queued), "")
        if name == "sbatch":
            return Result(0, f"{900 + self.calls['sbatch']}\n", "")
        return Result(0, "", "")


def chained_run(tmp_path, queued=("102",)):
    from launcher.slurm.chain import Chain
    from launcher.slurm.runner import LocalRunner
    (tmp_path / "telemetry").mkdir()
    Chain(run_dir=str(tmp_path), name="c", mode="singleton", script="job.sh", options=[],
          submitted=["101", *queued]).save(LocalRunner())
    jobs = tmp_path / "slurm" / "jobs"
    jobs.mkdir(parents=True)
    (jobs / "101.json").write_text(json.dumps({"job_id": "101", "code": exitcodes.FAILED, "start": 1.0,
                                               "from_step": 40, "to_step": 40, "message": "rank 3 died"}))
    return RunDir(tmp_path), FakeSlurm(list(queued))


def test_keeper_counts_a_crash_once_when_chain_json_cannot_be_written(tmp_path, monkeypatch):
    from bigops.watchdog.chain import keep
    from launcher.slurm.chain import Chain
    run, slurm = chained_run(tmp_path)

    def full_disk(self, runner):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(Chain, "save", full_disk)
    path = tmp_path / "watchdog" / "state.json"
    for n in range(6):
        findings, _ = keep(run, WatchState.load(path), now=1000.0 + 10 * n, runner=slurm)
        assert any(f.kind == "ChainKeeperError" for f in findings)
    assert len(WatchState.load(path).restarts) == 1  # once, by job id, however often the pass comes back
    assert slurm.calls["scontrol"] == 0  # and the chain is not held because of our own recount


def test_keeper_counts_and_records_a_crash_once(tmp_path):
    from bigops.watchdog.chain import keep
    run, slurm = chained_run(tmp_path)
    path = tmp_path / "watchdog" / "state.json"
    findings, facts = keep(run, WatchState.load(path), now=1000.0, runner=slurm)
    assert [f.kind for f in findings] == ["ChainJobFailed"] and facts["held"] is False
    for n in range(3):
        findings, _ = keep(run, WatchState.load(path), now=1010.0 + n, runner=slurm)
        assert findings == []
    (restart,) = WatchState.load(path).restarts
    assert restart["job_id"] == "101"
    assert len([e for e in events(tmp_path, "action") if e["action"] == "restart"]) == 1


def test_a_damaged_latest_is_set_aside_once_through_the_journal(tmp_path):
    supervisor, spawned, _ = supervisor_for(tmp_path, [exitcodes.FINISHED])
    run = supervisor.run
    publish(run, 60, 70)
    weights = run.checkpoint("global_step70") / "weights.pt"
    weights.write_bytes(b"\x00" + weights.read_bytes()[1:])  # bit rot: same size, other bytes
    assert supervisor.run_until_done() == exitcodes.FINISHED
    assert run.latest_tag() == "global_step60" and ckpt.complete_tags(run) == ["global_step60"]
    (event,) = [e for e in events(tmp_path, "action") if e["action"] == "rollback"]
    assert event["unusable"] == "global_step70" and "skip_range" not in event
    assert list((run.checkpoints / ".rolled-back").glob("*/global_step70"))
    again, _, _ = supervisor_for(tmp_path, [exitcodes.FINISHED])
    assert again.run_until_done() == exitcodes.FINISHED
    assert len([e for e in events(tmp_path, "action") if e["action"] == "rollback"]) == 1


def test_act_on_incidents_syncs_each_desync_incident_once(tmp_path):
    from bigops.watchdog.daemon import tick
    from bigops.watchdog.executor import act_on_incidents
    from bigops.watchdog.scan import WatchConfig
    from tests.unit.test_watch import write_run
    write_run(tmp_path, [{"step": 10, "loss": 2.0, "ln_desync": 0.0}, {"step": 20, "loss": 2.0, "ln_desync": 0.01}])
    run = RunDir(tmp_path)
    _, facts = tick(run, state_of(tmp_path), now=100.0, config=WatchConfig(on_desync="notify"))
    (desync,) = [i for i in facts["incidents"] if i["kind"] == "TPDesync"]
    control = tmp_path / "control" / "sync-layernorm"
    assert not control.exists()
    lines = act_on_incidents(run, state_of(tmp_path), facts["incidents"], WatchConfig(), 110.0, False, None)
    assert len(lines) == 1 and json.loads(control.read_text())["step"] == 20
    (event,) = [e for e in events(tmp_path, "action") if e["action"] == "sync-layernorm"]
    assert event["incident"] == desync["id"]
    control.unlink()
    assert act_on_incidents(run, state_of(tmp_path), facts["incidents"], WatchConfig(), 120.0, False, None) == []
    assert not control.exists()


def test_the_journal_begins_once_per_incident_and_lists_only_what_is_in_flight(tmp_path):
    from bigops.watchdog.journal import Journal, intent_id
    journal = Journal(tmp_path)
    intent, fresh = journal.begin("restart", {"reason": "crash"}, incident="inc9")
    assert fresh and intent["id"] == intent_id("restart", "inc9") and journal.in_flight() == [intent]
    again, fresh = journal.begin("restart", {"reason": "other"}, incident="inc9")
    assert not fresh and again["params"]["reason"] == "crash"
    journal.step(intent, "count")
    journal.done(intent, "counted")
    assert journal.in_flight() == [] and journal.get(intent["id"])["status"] == "done"
    assert journal.exists(intent["id"]) and journal.handled() == frozenset({"inc9"})
    assert not journal.begin("restart", {}, incident="inc9")[1]  # done: still once


def test_rollbacks_in_the_journal_bound_a_recurring_spike(tmp_path):
    from bigops.watchdog.decide import GiveUp, Policy, Rollback, decide
    from bigops.watchdog.executor import Executor, view_for
    run = RunDir(tmp_path)
    publish(run, 60, 70, 72)
    policy = Policy(global_batch_size=8, rollback_skip_batches=2)

    def spike(iid, start):
        return [{"id": iid, "key": f"LossSpike:{iid}", "kind": "LossSpike", "severity": "critical", "status": "open",
                 "summary": "loss spike", "evidence": {"start_step": start}, "opened": 1.0}]
    executor = Executor(run, state_of(tmp_path))
    for iid, start, attempt in (("s1", 71, 1), ("s2", 73, 2)):
        view = view_for(run, executor.state, executor.journal, spike(iid, start), 1.0, 70, with_checkpoints=True)
        (_, rollback, _) = decide(spike(iid, start), view, policy)
        assert isinstance(rollback, Rollback) and rollback.attempt == attempt and rollback.target_tag == "global_step70"
        executor.execute(rollback)
    # the second skip starts at the sample that fed the recurring spike's first step (past the first skip:
    # steps 71, 72 read 576-591 again) and is twice as wide
    from bigops.checkpoint.rollback import read_skip_ranges
    assert read_skip_ranges(tmp_path) == [(560, 576), (592, 624)]
    view = view_for(run, executor.state, executor.journal, spike("s3", 72), 1.0, 70, with_checkpoints=True)
    (_, stop) = decide(spike("s3", 72), view, policy)
    assert isinstance(stop, GiveUp) and "after 2 rollbacks" in stop.outcome
