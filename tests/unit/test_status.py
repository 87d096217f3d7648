"""`bigops status` on run directories built with the writers the trainer, the launcher and the watchdog use
(metrics sink, heartbeats, exit record, checkpoint publish, incident table, journal), at a frozen "now":
golden screens for a running, a finished, a crashed, a damaged-checkpoint and a 384-rank run, the JSON
document, the state rules, and one refresh of ``--watch``.

Regenerate the golden files after a deliberate change with BIGOPS_UPDATE_GOLDEN=1 (then read the diff).
"""

from __future__ import annotations

import json
import os
import types
from pathlib import Path

import pytest

from bigops.cli.main import main
from bigops.status.facts import collect
from bigops.status.render import SCHEMA_VERSION, document, lines
from bigops.status.summary import summarize
from bigops.watchdog import incidents as incidents_mod
from bigops.watchdog.detectors.disk import DiskUsage
from bigops.watchdog.findings import Finding
from bigops.watchdog.journal import Journal
from bigops.watchdog.scan import WatchConfig
from bigops.watchdog.state import WatchState
from launcher import plan
from tests.unit.test_ckpt_tools import make_checkpoint, run  # noqa: F401 (run: the fixture of a bare run dir)
from trainer import checkpoint as ckpt
from trainer import exitcodes
from trainer import config as config_mod
from trainer import startup
from trainer.rundir import RunDir, append_jsonl, atomic_write_text
from trainer.telemetry import Heartbeat, MetricsSink

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "status"
T0 = 1_790_000_000.0
"""The frozen clock's origin: every record is written at T0 + seconds, and status is asked at a given now."""
ROOMY_DISK = WatchConfig(disk_usage=lambda path: DiskUsage(total_bytes=10**13, free_bytes=9 * 10**12,
                                                           total_inodes=10**8, free_inodes=9 * 10**7))


class Clock:
    """The writers' ``time.time``: patched into the modules that stamp records (exit.json, manifests)."""

    def __init__(self, t: float = T0):
        self.t = t

    def time(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    fake = types.SimpleNamespace(time=c.time, gmtime=__import__("time").gmtime,
                                 strftime=__import__("time").strftime)
    monkeypatch.setattr(exitcodes, "time", fake)
    monkeypatch.setattr(ckpt, "time", fake)
    return c


# ------------------------------------------------------------------------------------------ the builders
def write_config(run: RunDir, preset: str = "tiny", *overrides: str) -> config_mod.RunConfig:
    cfg = plan.fresh_config(preset, None, ["data.source=synthetic", *overrides])
    atomic_write_text(run.run_toml, config_mod.dumps_toml(cfg))  # as launcher.local writes it
    return cfg


def write_metrics(run: RunDir, steps: range, loss=lambda s: 3.0 - s / 1000, tps=lambda s: 100_000.0,
                  seconds: float = 2.0) -> None:
    """One record per step, step s at T0 + s x seconds (the trainer's MetricsSink, without TensorBoard)."""
    sink = MetricsSink(run, tensorboard=False)
    for s in steps:
        sink.write({"step": s, "time": T0 + s * seconds, "loss": loss(s), "grad_norm": 1.0, "lr": 1e-4,
                    "tokens_per_second": tps(s), "step_seconds": seconds, "consumed_samples": 8 * s,
                    "skipped": False})


def write_beats(run: RunDir, ranks: range, step: int, time: float, phase: str = "step", per_node: int = 8,
                **odd: tuple) -> None:
    """Each rank's heartbeat as the trainer's ``Heartbeat`` records it (host n<rank // per_node>);
    ``odd={"r17": (phase, step, time)}`` overrides one rank."""
    for rank in ranks:
        hb = Heartbeat(run, rank, stage=0, dp_rank=rank, tp=1, launch="launch-1")
        hb.host, hb.pid = f"n{rank // per_node}", 1000 + rank
        ph, st, t = odd.get(f"r{rank}", (phase, step, time))
        hb.step = st
        atomic_write_text(hb.path, json.dumps(hb.record(ph, t)))


def save_checkpoint(run: RunDir, clock: Clock, step: int) -> str:
    """A checkpoint as the trainer saves one: files in .partial-<tag>, manifest, rename, latest."""
    clock.t = T0 + step * 2.0  # the manifest's "created"
    return make_checkpoint(run, step)


def open_incident(run: RunDir, finding: Finding, opened: float, seen: float, action: tuple | None = None) -> None:
    """The watchdog's incident table (``incidents.advance``, ``record_action``), saved as the daemon does."""
    table, _ = incidents_mod.advance({}, [finding], opened, make_id=lambda: "a1b2c3d4e5f6")
    table, _ = incidents_mod.advance(table, [finding], seen, full=False)
    if action is not None:
        incidents_mod.record_action(table, "a1b2c3d4e5f6", action[0], action[1], opened + 30)
    WatchState(path=run.watchdog_state, incidents=table).save()


def screen(run: RunDir, now: float) -> str:
    return "\n".join(lines(summarize(collect(run, now, ROOMY_DISK), now))).replace(str(run.root), "RUN") + "\n"


def golden(name: str, text: str) -> None:
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("BIGOPS_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"screen differs from {path}:\n{text}"


# --------------------------------------------------------------------------------------- the golden screens
def running_run(run: RunDir, clock: Clock) -> float:
    write_config(run, "tiny", "train.train_steps=1000")
    write_metrics(run, range(1, 401))
    save_checkpoint(run, clock, 300)
    write_beats(run, range(4), 400, T0 + 800.5)
    run.tensorboard.mkdir()
    spike = Finding("LossSpike", "critical", "loss spike since step 350: peak 7.1", key="LossSpike:0:350", step=350)
    open_incident(run, spike, opened=T0 + 700, seen=T0 + 800, action=("rollback", "latest -> global_step300"))
    return T0 + 801.0


def test_running_run(run, clock):
    now = running_run(run, clock)
    text = screen(run, now)
    golden("running", text)
    first = text.splitlines()
    assert first[0] == "RUN  RUNNING" and first[1] == "problems (1):"
    assert "LossSpike, open 101 s: loss spike since step 350" in text  # the incident's age, from the watchdog's table
    assert "done: rollback: latest -> global_step300" in text
    assert "step 400/1000 (40.0%)  0.5 steps/s  ETA 20 min" in text  # 600 steps at 0.5 steps/s
    assert "ranks: 4, 4 healthy" in text and "tensorboard --logdir RUN/tensorboard" in text


def test_finished_run_says_finished_and_keeps_an_old_throughput_drop_apart(run, clock):
    write_config(run, "tiny", "train.train_steps=300")
    # throughput falls 20 % over the last 60 steps: the detector finds a drop in the tail
    write_metrics(run, range(1, 301), tps=lambda s: 100_000.0 if s <= 240 else 80_000.0)
    save_checkpoint(run, clock, 300)
    write_beats(run, range(4), 300, T0 + 601.0, phase="exit")
    clock.t = T0 + 602.0
    exitcodes.record(run.exit_record, exitcodes.FINISHED, "reached step 300", 0)
    text = screen(run, T0 + 3600.0)
    golden("finished", text)
    assert text.startswith("RUN  FINISHED (50 min ago): exit code 0 (finished)\nproblems: none\n")
    assert "ThroughputDrop (warning)" in text.split("not current (1):")[1]  # history, not a problem
    assert "ETA" not in text


def write_startup(run: RunDir, launched: float, seconds: list[dict], resumed_from: str | None) -> None:
    """The start-up record rank 0 appends after a launch's first step (``trainer.startup.summarize``)."""
    own = []
    for rank_seconds in seconds:
        ready = launched + sum(rank_seconds.values())
        own.append({"seconds": rank_seconds, "launched": launched, "started": launched + rank_seconds["spawn"],
                    "ready": ready})
    append_jsonl(run.startup_log, startup.summarize(own, launch="launch-1", step=1, resumed_from=resumed_from,
                                                    now=max(o["ready"] for o in own)))


def test_crashed_run_names_the_rank_and_the_message_not_a_hang(run, clock):
    write_config(run, "tiny", "train.train_steps=1000")
    write_startup(run, T0 - 30.0, [{"spawn": 0.5, "imports": 10.0, "rendezvous": 2.0, "data": 0.5, "checkpoint": 0.1,
                                    "engine": 12.0, "load": 0.0, "first_step": 1.0},
                                   {"spawn": 0.6, "imports": 14.0, "rendezvous": 1.5, "data": 0.4, "checkpoint": 0.1,
                                    "engine": 11.0, "load": 0.0, "first_step": 1.2}], None)
    write_metrics(run, range(1, 251))
    save_checkpoint(run, clock, 200)
    write_beats(run, range(4), 251, T0 + 502.0, phase="backward")
    clock.t = T0 + 503.0
    exitcodes.record(run.exit_record, exitcodes.FAILED, "Traceback ...\nRuntimeError: CUDA error: an illegal "
                     "memory access was encountered", 2)
    text = screen(run, T0 + 1100.0)
    golden("crashed", text)
    lines_ = text.splitlines()
    assert lines_[0].startswith("RUN  CRASHED (10 min ago): exit code 1 (failed) on rank 2: RuntimeError: CUDA")
    assert lines_[2].startswith("  [CRITICAL] RankCrash, open 10 min: no rank is running")
    assert "rank 2 on n0: recorded the crash" in text
    assert "TrainingHang" not in text.split("not current")[0]  # the ranks exited: no hang today
    assert "ranks: 4, not running (4 backward)" in text
    # the last launch's budget: max over its two ranks, the largest phase named with its rank
    assert ("start-up of the last launch: 28.8 s to the first step: spawn 0.6, imports 14.0, rendezvous 2.0, data "
            "0.5, checkpoint 0.1, engine 12.0, load 0.0, first step 1.2 s (max over ranks); largest: imports (rank 1)"
            in lines_)
    assert "goodput: 94.3% productive of 530 s; largest loss first start-up 5.7%" in lines_  # 30 s to step 1


def test_damaged_checkpoint_is_a_problem_as_ckpt_list_says(run, clock, capsys):
    running_run(run, clock)
    WatchState(path=run.watchdog_state).save()  # no incident: only the checkpoint is wrong
    tag = save_checkpoint(run, clock, 400)
    engine = run.checkpoint(tag) / "mp_rank_00_model_states.pt"
    engine.write_bytes(engine.read_bytes()[:100])  # truncated after the manifest was written
    text = screen(run, T0 + 801.0)
    golden("damaged-checkpoint", text)
    assert "problems: none" not in text
    problem = text.splitlines()[2]
    assert problem.startswith("  [CRITICAL] CheckpointDamaged: latest names global_step400, which is incomplete")
    assert "newest complete: global_step300 (step 300)" in problem
    assert main(["ckpt", "list", str(run.root)]) == 0
    warning = capsys.readouterr().out.split("warning:")[1].split()
    assert " ".join(warning) in " ".join(problem.split())  # the same words as `bigops ckpt list`


def test_the_newest_verified_checkpoint_is_named_and_a_failed_hash_is_a_problem(run, clock, capsys):
    """What the verified stamps say (trainer.verified; read, never hashed, by status and `ckpt list`)."""
    from trainer import verified
    running_run(run, clock)
    WatchState(path=run.watchdog_state).save()
    verified.verify_and_stamp(run.checkpoint("global_step300"), "test")
    assert "newest complete of 1, verified" in screen(run, T0 + 801.0)
    tag = save_checkpoint(run, clock, 400)
    assert "checkpoint: global_step400 (step 400" in screen(run, T0 + 801.0)
    assert "; newest verified: global_step300" in screen(run, T0 + 801.0)
    engine = run.checkpoint(tag) / "mp_rank_00_model_states.pt"
    engine.write_bytes(b"E" + engine.read_bytes()[1:])  # same size: only a hash sees it
    verified.verify_and_stamp(run.checkpoint(tag), "test")
    problem = screen(run, T0 + 801.0).splitlines()[2]
    assert problem.startswith("  [CRITICAL] CheckpointDamaged: global_step400 failed its hash check: "
                              "mp_rank_00_model_states.pt: sha256 differs (altered)")
    assert main(["ckpt", "list", str(run.root)]) == 0
    out = capsys.readouterr().out
    assert "newest verified: global_step300 (step 300)" in out and "damaged" in out


def test_384_ranks_fit_a_screen_and_only_the_odd_rank_is_named(run, clock):
    write_config(run, "bloom-176b", "parallel.dp=8", "train.train_steps=1000")
    write_metrics(run, range(1, 401), seconds=20.0)
    save_checkpoint(run, clock, 300)
    now = T0 + 8001.0
    write_beats(run, range(384), 400, now - 1.0, r17=("backward", 400, now - 1800.0))
    text = screen(run, now)
    golden("384-ranks", text)
    assert len(text.splitlines()) < 30
    assert text.splitlines()[0].startswith("RUN  HUNG")
    assert text.splitlines()[2].startswith("  [CRITICAL] TrainingHang")
    assert "ranks: 384, 383 healthy (383 step, 1 backward)" in text
    named = [line for line in text.splitlines() if line.startswith("  rank ")]
    assert named == ["  rank 17 on n2: no heartbeat for 30 min (backward, step 400)"]


# ------------------------------------------------------------------------------------------------ the JSON
def test_json_has_a_schema_version_and_the_same_facts(run, clock, capsys, monkeypatch):
    now = running_run(run, clock)
    monkeypatch.setattr("bigops.cli.status.time", types.SimpleNamespace(time=lambda: now))
    assert main(["status", str(run.root), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schema_version"] == SCHEMA_VERSION == 1
    assert data["state"]["name"] == "running" and data["progress"]["step"] == 400
    assert data["progress"]["eta_s"] == pytest.approx(1200.0)
    (problem,) = [p for p in data["problems"] if p["kind"] not in ("DiskFullSoon", "InodesLow")]  # this disk's
    assert problem["kind"] == "LossSpike" and problem["age_s"] == pytest.approx(101.0)
    assert problem["done"] == ["rollback: latest -> global_step300"] and problem["incident"] == "a1b2c3d4e5f6"
    assert data["checkpoint"]["newest_complete"]["tag"] == "global_step300"
    assert data["ranks"]["healthy"] == 4 and data["last_record"]["step"] == 400
    assert data["tensorboard"] == str(run.tensorboard)
    goodput = data["goodput"]  # steps 1-400 at 2 s each, one save (the checkpoint fixture logs none)
    assert goodput["seconds"]["productive"] == pytest.approx(800.0) and goodput["wall_s"] == pytest.approx(800.0)
    assert data["startup"] is None  # no launch recorded one


def test_json_is_strict_even_with_a_nan_loss(run, clock):
    write_metrics(run, range(1, 5), loss=lambda s: float("nan") if s == 4 else 2.0)
    text = json.dumps(document(summarize(collect(run, T0 + 10, ROOMY_DISK), T0 + 10)), allow_nan=False)
    assert json.loads(text)["progress"]["loss"] is None


# ------------------------------------------------------------------------------------------ the state rules
def test_a_timed_out_slurm_job_with_a_kept_chain_is_waiting_in_slurm(run, clock):
    write_metrics(run, range(1, 11))
    write_beats(run, range(2), 10, T0 + 20.0, phase="exit")
    atomic_write_text(run.chain_record, json.dumps({"name": "tr11", "submitted": ["101", "102"], "keeper": {}}))
    atomic_write_text(run.slurm_job("101"), json.dumps({"job_id": "101", "start": T0, "code": 11}))
    clock.t = T0 + 21.0
    exitcodes.record(run.exit_record, exitcodes.STOPPED_BY_SIGNAL, "time limit", 0)
    status = summarize(collect(run, T0 + 60, ROOMY_DISK), T0 + 60)
    assert status.state.name == "waiting in SLURM" and "next job 102 of chain tr11" in status.state.detail
    assert status.problems == ()


def test_a_give_up_after_the_last_heartbeat_is_given_up(run, clock):
    write_metrics(run, range(1, 11))
    write_beats(run, range(2), 10, T0 + 20.0)
    clock.t = T0 + 21.0
    exitcodes.record(run.exit_record, exitcodes.FAILED, "boom", 1)
    journal = Journal(run.root)
    intent, _ = journal.begin("give-up", {"reason": "crash: boom", "outcome": "restart budget exhausted"},
                              incident="i1", now=T0 + 30)
    journal.done(intent, "restart budget exhausted", now=T0 + 31)
    status = summarize(collect(run, T0 + 60, ROOMY_DISK), T0 + 60)
    assert status.state.name == "given up"
    assert [p.kind for p in status.problems] == ["WatchdogGiveUp"]


def test_an_incident_the_watchdog_stopped_seeing_is_stale(run, clock):
    write_metrics(run, range(1, 11))
    write_beats(run, range(2), 10, T0 + 20.0)
    finding = Finding("TPDesync", "warning", "layer norms drift 0.004", key="TPDesync", step=8)
    open_incident(run, finding, opened=T0 - 7200, seen=T0 - 3600)
    status = summarize(collect(run, T0 + 21, ROOMY_DISK), T0 + 21)
    assert status.problems == () and [p.kind for p in status.stale] == ["TPDesync"]
    assert "not seen it for 60 min" in status.stale[0].stale


def test_a_megatron_checkpoint_shows_its_iteration(run):
    from tests.distributed import megatron_writer as mw
    shape = mw.Shape(iteration=1000)
    written = mw.write_checkpoint(run.checkpoints, mw.reference_model(shape), shape)
    renamed = written.rename(run.checkpoints / "tr11-final")  # no step in the tag: only the engine file knows
    atomic_write_text(run.latest, renamed.name + "\n")
    text = screen(run, T0)
    assert "checkpoint: tr11-final (step 1000," in text and "step None" not in text
    assert "CheckpointDamaged" not in text


# ----------------------------------------------------------------------------------------------- --watch
def test_one_refresh_of_watch_shows_the_new_step(run, clock):
    from bigops.cli import status as status_cli
    running_run(run, clock)
    first = status_cli.screen_text(run, T0 + 801.0, ROOMY_DISK)
    write_metrics(run, range(401, 403))
    write_beats(run, range(4), 402, T0 + 804.5)
    second = status_cli.screen_text(run, T0 + 805.0, ROOMY_DISK)
    assert "step 400/1000" in first and "step 402/1000" in second
    assert second.splitlines()[0] == first.splitlines()[0]


def test_watch_and_json_together_is_one_line_and_a_usage_code(run, capsys):
    assert main(["status", str(run.root), "--watch", "--format", "json"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
