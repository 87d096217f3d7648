"""Crash-point enumeration: the executor is stopped at every step of every action (before it, after its effect
but before it is journaled, before the outcome), a new executor starts on the same run directory, and the
action has completed exactly once with nothing lost (checkpoints hashed before and after, skip ranges
present once, ``latest`` naming a complete checkpoint, one ``action`` event)."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from bigops.watchdog.decide import ChainHold, Restart, Rollback, Sync
from bigops.watchdog.executor import Executor, Prune
from bigops.watchdog.state import WatchState
from tests.unit.test_executor import chained_run, publish
from trainer import checkpoint as ckpt
from trainer.rundir import RunDir, append_jsonl, read_jsonl


class Killed(BaseException):
    pass


def points(action):
    steps = Executor(RunDir("/nonexistent"), None).steps(action)
    return [("begin", "applied")] + [(s, w) for s in steps for w in ("before", "applied")] + [("done", "before")]


def dying_at(point):
    def hook(intent, step, when):
        if (step, when) == point:
            raise Killed(point)
    return hook


def state(root):
    return WatchState.load(root / "watchdog" / "state.json")


def fingerprint(run):
    """Every checkpoint file anywhere under checkpoints/ (live or set aside), by tag: its hash."""
    out = {}
    for path in sorted(run.checkpoints.rglob("*")):
        if path.is_file() and path.name != "latest":
            out[(path.parent.name, path.name)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def actions(root, name):
    return [e for e in read_jsonl(root / "events.jsonl") if e.get("type") == "action" and e.get("action") == name]


def crash_then_restart(root, action, point, runner=None, between=None):
    run = RunDir(root)
    with pytest.raises(Killed):
        Executor(run, state(root), hook=dying_at(point), runner=runner).execute(action)
    if between is not None:
        between()
    again = Executor(run, state(root), runner=runner)
    again.roll_forward()
    assert again.execute(action) is None  # done: never a second time
    assert Executor(run, state(root), runner=runner).roll_forward() == []
    return again


ROLLBACK = Rollback("inc1", "loss spike since step 71", 71, "global_step70", 70, ("global_step72", "global_step80"),
                    (560, 592), 2)


@pytest.mark.parametrize("point", points("rollback"))
def test_rollback_completes_once_whatever_instant_it_dies(tmp_path, point):
    run = RunDir(tmp_path)
    publish(run, 60, 70, 72, 80)
    (tmp_path / "control").mkdir()
    (tmp_path / "control" / "skip-ranges").write_text("100-200  # an earlier one\n")
    before = {name: digest for (_, name), digest in fingerprint(run).items()}
    before_by_tag = {k: v for k, v in fingerprint(run).items()}
    crash_then_restart(tmp_path, ROLLBACK, point)
    assert run.latest_tag() == "global_step70" and not ckpt.verify(run.checkpoint("global_step70"))
    assert ckpt.complete_tags(run) == ["global_step60", "global_step70"]
    after = fingerprint(run)
    assert sorted(after.values()) == sorted(before_by_tag.values())  # nothing lost, nothing altered
    assert {tag for tag, _ in after} >= {"global_step72", "global_step80"} and len(before) <= len(after)
    text = (tmp_path / "control" / "skip-ranges").read_text()
    assert text.count("560-592") == 1 and text.startswith("100-200")
    from trainer.control import parse_skip_ranges
    assert parse_skip_ranges(text) == [(100, 200), (560, 592)]
    (event,) = actions(tmp_path, "rollback")
    assert event["target"] == "global_step70" and event["skip_range"] == [560, 592]


def test_rollback_killed_by_a_signal_in_a_child_process_completes(tmp_path):
    """The same with a real death (os._exit) after ``latest`` moved and before it is journaled."""
    run = RunDir(tmp_path)
    publish(run, 60, 70, 72, 80)
    before = sorted(fingerprint(run).values())
    child = f"""
import os, sys
sys.path.insert(0, {os.getcwd()!r})
from bigops.watchdog.executor import Executor
from bigops.watchdog.state import WatchState
from tests.unit.test_crash_points import ROLLBACK
from trainer.rundir import RunDir
def hook(intent, step, when):
    if (step, when) == ("latest", "applied"):
        os._exit(9)
run = RunDir({str(tmp_path)!r})
Executor(run, WatchState.load(run.root / "watchdog" / "state.json"), hook=hook).execute(ROLLBACK)
"""
    assert subprocess.run([sys.executable, "-c", child], timeout=120).returncode == 9
    assert run.latest_tag() == "global_step70"
    Executor(run, state(tmp_path)).roll_forward()
    assert sorted(fingerprint(run).values()) == before and ckpt.complete_tags(run) == ["global_step60",
                                                                                          "global_step70"]
    assert len(actions(tmp_path, "rollback")) == 1


@pytest.mark.parametrize("point", points("restart"))
def test_restart_is_counted_once(tmp_path, point):
    crash_then_restart(tmp_path, Restart("inc2", "crash (rank 1 died)", 40, "restart 1 of 5"), point)
    (entry,) = state(tmp_path).restarts
    assert entry["from_step"] == 40
    assert len(actions(tmp_path, "restart")) == 1


@pytest.mark.parametrize("point", points("sync-layernorm"))
def test_sync_is_requested_once_and_not_again_after_the_trainer_did_it(tmp_path, point):
    control = tmp_path / "control" / "sync-layernorm"

    def trainer_syncs():  # between the death and the restart, the trainer honours a request it found
        if control.exists():
            request = control.read_text()
            control.unlink()
            append_jsonl(tmp_path / "events.jsonl", {"type": "action", "action": "sync-layernorm",
                                                     "source": "trainer", "request": request.strip()})
    crash_then_restart(tmp_path, Sync("inc3", "ln_desync 0.01", 70), point, between=trainer_syncs)
    syncs = [e for e in actions(tmp_path, "sync-layernorm") if e.get("source") == "trainer"]
    watchdog = [e for e in actions(tmp_path, "sync-layernorm") if e.get("source") != "trainer"]
    assert len(watchdog) == 1
    # exactly one sync happens: the trainer's before the restart, or the request the restart left
    assert len(syncs) + control.exists() == 1


@pytest.mark.parametrize("point", points("chain-hold"))
def test_chain_hold_completes_once(tmp_path, point):
    run, slurm = chained_run(tmp_path, queued=("102", "103"))
    crash_then_restart(tmp_path, ChainHold("inc4", "job 101: config error", "101"), point, runner=slurm)
    holds = [argv for argv in slurm.argvs if argv[:2] == ["scontrol", "hold"]]
    assert holds and all(argv == ["scontrol", "hold", "102,103"] for argv in holds)  # idempotent in SLURM
    assert len(actions(tmp_path, "chain-hold")) == 1


@pytest.mark.parametrize("point", points("prune"))
def test_prune_removes_exactly_what_was_decided_once(tmp_path, point):
    run = RunDir(tmp_path)
    publish(run, 10, 20, 30, 40, 50)
    keep = {k: v for k, v in fingerprint(run).items() if k[0] in ("global_step40", "global_step50")}
    crash_then_restart(tmp_path, Prune(("global_step10", "global_step20", "global_step30")), point)
    assert ckpt.complete_tags(run) == ["global_step40", "global_step50"]
    assert fingerprint(run) == keep  # what was kept is intact
    assert not [p for p in run.checkpoints.iterdir() if p.name.startswith(".deleting-")]
    assert run.latest_tag() == "global_step50" and not ckpt.verify(run.checkpoint("global_step50"))
    (event,) = actions(tmp_path, "prune")
    assert "global_step10" in event["outcome"] and json.loads(json.dumps(event))
