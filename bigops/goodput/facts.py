"""The I/O edge of ``bigops goodput``: the records the accounting needs, read once from a run directory.

Read only, through the run-directory contract, tolerant of torn or malformed lines (a bad line is skipped,
never a crash: goodput is asked about damaged runs too):

- ``telemetry/metrics.jsonl``: every step's ``step``, ``time`` and ``step_seconds`` (all of it, not a tail:
  a step lost at the start of the run counts as much as one at the end);
- ``telemetry/checkpoints.jsonl``: the saves (their seconds) and the loads (a launch began there);
- ``telemetry/startup.jsonl``: when each launch started (``launched``);
- ``events.jsonl``: the incidents (findings and notices) and the watchdog's actions;
- ``slurm/jobs/*.json``: each SLURM job's start and end (the queue between them);
- ``run.toml``: ``train.save_interval``.
"""

from __future__ import annotations

import json
from pathlib import Path

from bigops.goodput.account import Records, Step
from trainer.rundir import RunDir, number, read_run_config

MAX_LINE = 1 << 20


def read_lines(path: Path) -> list[dict]:
    """The JSON objects of the complete lines of ``path`` (missing file: none; bad lines skipped)."""
    try:
        data = path.read_bytes()
    except OSError:
        return []
    out = []
    for raw in data[:data.rfind(b"\n") + 1].split(b"\n"):
        if not raw.strip() or len(raw) > MAX_LINE:
            continue
        try:
            record = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def steps_of(records: list[dict]) -> list[Step]:
    out = []
    for r in records:
        step, when, seconds = r.get("step"), number(r.get("time")), number(r.get("step_seconds"))
        if isinstance(step, int) and not isinstance(step, bool) and when is not None:
            out.append(Step(step, when, seconds if seconds is not None and seconds >= 0 else 0.0))
    return out


def read_records(run: RunDir) -> Records:
    """Everything :func:`bigops.goodput.account.account` reads, from ``run``."""
    saves, launches = [], []
    for c in read_lines(run.checkpoint_log):
        when, seconds = number(c.get("time")), number(c.get("seconds"))
        if when is None or seconds is None:
            continue
        if c.get("kind") == "save":
            saves.append((when, seconds))
        elif c.get("kind") == "load":
            launches.append(when - seconds)
    launches += [t for s in read_lines(run.startup_log) if (t := number(s.get("launched"))) is not None]
    events = [e for e in read_lines(run.events) if number(e.get("time")) is not None]
    jobs = []
    if run.slurm_jobs.is_dir():
        for path in sorted(run.slurm_jobs.glob("*.json")):
            try:
                job = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(job, dict):
                jobs.append(job)
    return Records(steps=steps_of(read_lines(run.metrics)), saves=saves, launches=sorted(launches),
                   events=events, jobs=jobs)


def startups(run: RunDir) -> list[dict]:
    """Every launch's start-up record, oldest first."""
    return [s for s in read_lines(run.startup_log) if isinstance(s.get("phases"), dict)]


def save_interval(run: RunDir) -> int | None:
    cfg = read_run_config(run)
    return cfg.train.save_interval if cfg is not None else None
