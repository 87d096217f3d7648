"""The I/O edge of ``bigops status``: read everything the screen needs from a run directory, once.

Every path comes from the run-directory contract (``trainer.rundir``); every reader is tolerant (a missing
or torn file is "not known", never an exception), because status is run on a damaged run above all.
Nothing is written: status only reads (no events, no watchdog state, no hashing of checkpoints).

What is read, and by whom it was written:

- ``telemetry/metrics.jsonl`` (the trainer, rank 0): its tail, for the step, the rate and the loss trend;
- ``telemetry/heartbeat/`` (every rank), ``telemetry/exit.json`` (the first rank that exited);
- ``watchdog/state.json`` (the watchdog: its incidents and pending approvals), ``watchdog/intents/``
  (its journal: a give-up), ``watchdog/supervisor.json`` (``bigops launch --watch`` while it owns the ranks);
- ``slurm/chain.json`` and ``slurm/jobs/`` (``bigops launch --slurm`` and each job);
- ``telemetry/startup.jsonl`` (rank 0, once per launch): the last launch's start-up budget;
- the records ``bigops goodput`` accounts (all of metrics.jsonl, checkpoints.jsonl, events.jsonl, the SLURM
  job records: ``bigops.goodput.facts``), for the goodput line;
- ``checkpoints/`` through the inventory that ``bigops ckpt list`` uses (sizes against the manifest, no
  hashing), so both say the same about ``latest``;
- a fresh pass of the watchdog's detectors over the tail (``bigops.watchdog.scan.scan_run``), for what is
  wrong now even when no watchdog runs.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from pathlib import Path

from trainer.rundir import RunDir, pid_alive, read_exit_record, read_run_config, read_tail, supervised

TAIL_RECORDS = 2000
"""Metrics records read from the end of metrics.jsonl (the loss trend and the rate need no more)."""


@dataclass(frozen=True)
class CheckpointFacts:
    """What the inventory says about the run's checkpoints (the same scan as ``bigops ckpt list``)."""

    latest: str | None = None
    """The tag ``checkpoints/latest`` names (None: no such file, or it is corrupt)."""
    latest_problem: str | None = None
    """Why ``latest`` cannot be trusted (corrupt, names nothing, names an incomplete checkpoint)."""
    newest_complete: dict | None = None
    """{"tag", "step", "created"} of the newest complete live checkpoint (sizes checked against its manifest,
    or by the layout for one Megatron-DeepSpeed wrote); its step is Megatron's ``iteration`` without ours."""
    incomplete: tuple[dict, ...] = ()
    """{"tag", "step", "problem"} of live checkpoints newer than ``newest_complete`` that are incomplete."""
    partial: tuple[str, ...] = ()
    """Tags being written (``.partial-<tag>``): a save in progress, or one that crashed."""
    count: int = 0
    """Complete live checkpoints."""
    newest_verified: dict | None = None
    """{"tag", "step"} of the newest live checkpoint its verified stamp vouches for (``trainer.verified``)."""
    damaged: tuple[dict, ...] = ()
    """{"tag", "step", "problem"} of complete live checkpoints newer than ``newest_verified`` whose stamp says a
    file failed its hash (a resume refuses them)."""


@dataclass(frozen=True)
class RunFacts:
    """Everything ``bigops status`` shows, as read (``summary.summarize`` makes sense of it)."""

    root: str
    records: list[dict] = field(default_factory=list)
    """The tail of metrics.jsonl, oldest first."""
    heartbeats: dict[int, dict] = field(default_factory=dict)
    exit_record: dict | None = None
    supervisor_live: bool = False
    """A live ``bigops launch --watch`` owns the ranks (it restarts them itself)."""
    chain: dict | None = None
    """``slurm/chain.json`` (None: not a SLURM run, or unreadable)."""
    slurm_jobs: dict[str, dict] = field(default_factory=dict)
    gave_up: list[dict] = field(default_factory=list)
    """The watchdog's give-up intents ({"time", "reason", "outcome"}), oldest first."""
    incidents: dict[str, dict] = field(default_factory=dict)
    """The watchdog's incident table (``watchdog/state.json``), open and recently resolved."""
    findings: list = field(default_factory=list)
    """A fresh detector pass over the tail (``bigops.watchdog.findings.Finding``)."""
    pending: list[dict] = field(default_factory=list)
    """Actions waiting for a person: {"id", "action", "reason", "time", "approve", "deny"}."""
    checkpoints: CheckpointFacts = field(default_factory=CheckpointFacts)
    target_step: int | None = None
    world_size: int | None = None
    gpus: dict[str, list[dict]] = field(default_factory=dict)
    """The newest sample of each GPU, by host."""
    tensorboard: str | None = None
    """The TensorBoard log folder, when it exists."""
    resolve_after_s: float = 900.0
    """The watchdog's quiet period (``alerts.resolve_after_s``): an open incident not seen for longer is stale."""
    val_loss: float | None = None
    startup: dict | None = None
    """The last launch's start-up budget (the last record of ``telemetry/startup.jsonl``)."""
    spares: dict | None = None
    """The supervisor's warm spares ({"wanted", "warm", "time"}; None: no live supervisor keeps any)."""
    goodput: object | None = None
    """What ``bigops goodput`` accounts (``bigops.goodput.account.Records``; None: no step yet)."""
    save_interval: int | None = None


def collect(run: RunDir, now: float, config=None) -> RunFacts:
    """Read the run (read only). ``config``: the detectors' settings (``WatchConfig``; default: the run's own,
    from run.toml, as the watchdog uses them)."""
    from bigops.goodput import facts as goodput_facts
    from bigops.watchdog.approvals import command, waiting
    from bigops.watchdog.scan import scan_run
    from bigops.watchdog.settings import watch_config
    from bigops.watchdog.state import read_section

    cfg = read_run_config(run)
    if config is None:
        from trainer.config import RunConfig
        config = watch_config(cfg or RunConfig())
    findings, facts = scan_run(run, now=now, config=config)
    records, _ = read_tail(run.metrics, TAIL_RECORDS) if run.metrics.exists() else ([], 0)
    accounted = goodput_facts.read_records(run)
    incidents = read_section(run.watchdog_state, "incidents") or {}
    pending = [{"id": e.get("id"), "action": e.get("action"), "reason": e.get("reason"), "time": e.get("time"),
                "approve": command(run, "approve", e["id"]), "deny": command(run, "deny", e["id"])}
               for e in waiting(run)]
    live = supervised(run, pid_alive, socket.gethostname())
    spares = _json_object(run.spares) if live else None
    return RunFacts(
        root=str(run.root), records=records, heartbeats=facts.get("heartbeats") or {},
        exit_record=read_exit_record(run), supervisor_live=live, spares=spares or None,
        chain=_json_object(run.chain_record), slurm_jobs=_slurm_jobs(run), gave_up=_gave_up(run),
        incidents={k: v for k, v in incidents.items() if isinstance(v, dict)}, findings=findings, pending=pending,
        checkpoints=checkpoint_facts(run), target_step=cfg.train.train_steps if cfg else None,
        world_size=cfg.parallel.tp * cfg.parallel.pp * cfg.parallel.dp if cfg else None,
        gpus=_newest_gpu_samples(facts.get("gpus") or {}),
        tensorboard=str(run.tensorboard) if run.tensorboard.is_dir() else None,
        resolve_after_s=config.incidents.resolve_after_s, val_loss=facts.get("last_val_loss"),
        startup=(goodput_facts.startups(run) or [None])[-1], goodput=accounted if accounted.steps else None,
        save_interval=cfg.train.save_interval if cfg else None)


def checkpoint_facts(run: RunDir) -> CheckpointFacts:
    """The inventory of ``bigops ckpt list`` boiled down: latest, its problem, the newest complete one."""
    from bigops.checkpoint import inventory
    inv = inventory.scan(run)
    live = inv.live()
    complete = [e for e in live if e.complete]
    newest = complete[-1] if complete else None
    newest_facts = None
    if newest is not None:
        step = newest.step
        if not run.manifest(newest.tag).is_file() or step < 0:
            step = megatron_iteration(run.checkpoint(newest.tag), step)
        newest_facts = {"tag": newest.tag, "step": step, "created": newest.created}
    newer_bad = [{"tag": e.tag, "step": e.step, "problem": e.problem} for e in live
                 if not e.complete and (newest is None or e.step > newest.step or e.latest)]
    trusted = inv.newest_verified()
    damaged = [{"tag": e.tag, "step": e.step, "problem": e.stamp_problem} for e in complete
               if e.verified == inventory.DAMAGED and (trusted is None or e.step > trusted.step)]
    return CheckpointFacts(latest=inv.latest, latest_problem=inv.latest_problem, newest_complete=newest_facts,
                           incomplete=tuple(newer_bad), count=len(complete),
                           partial=tuple(e.tag for e in inv.entries if e.state == inventory.PARTIAL),
                           newest_verified={"tag": trusted.tag, "step": trusted.step} if trusted else None,
                           damaged=tuple(damaged))


def megatron_iteration(directory: Path, fallback: int) -> int | None:
    """The step of a checkpoint without our manifest: Megatron-DeepSpeed's ``iteration`` in its engine file
    (read by ``bigops.checkpoint.inspect``); ``fallback`` (the tag's number) when it cannot be read."""
    from bigops.checkpoint.inspect import read_engine
    step = read_engine(Path(directory), []).step
    if isinstance(step, int):
        return step
    return fallback if fallback >= 0 else None


def _gave_up(run: RunDir) -> list[dict]:
    from bigops.watchdog.journal import Journal
    out = []
    for intent in Journal(run.root).intents("give-up"):
        params = intent.get("params") if isinstance(intent.get("params"), dict) else {}
        when = intent.get("done_at", intent.get("begun"))
        if isinstance(when, (int, float)):
            out.append({"time": float(when), "reason": params.get("reason"),
                        "outcome": intent.get("outcome") or params.get("outcome")})
    return sorted(out, key=lambda g: g["time"])


def _slurm_jobs(run: RunDir) -> dict[str, dict]:
    jobs = {}
    if run.slurm_jobs.is_dir():
        for path in sorted(run.slurm_jobs.glob("*.json")):
            record = _json_object(path)
            if record is not None:
                jobs[str(record.get("job_id", path.stem))] = record
    return jobs


def _newest_gpu_samples(gpus: dict[str, list[dict]]) -> dict[str, list[dict]]:
    out = {}
    for host, samples in gpus.items():
        if samples:
            newest = max(s["time"] for s in samples)
            out[host] = [s for s in samples if s["time"] == newest]
    return out


def _json_object(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
