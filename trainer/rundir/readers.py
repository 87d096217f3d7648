"""Readers of the run directory's record files, each tolerant: a missing, torn or wrong-typed file gives
"nothing known" (None, an empty dict), never an exception. The watchdog, the status screen and the
checkpoint tools all read the run through these."""

from __future__ import annotations

import json
import os
from typing import Callable

from trainer.rundir.jsonl import HEARTBEAT_FIELDS, MAX_LINE_BYTES, number, read_tail, typed
from trainer.rundir.paths import HEARTBEAT_GLOB, RunDir


def read_heartbeats(run: RunDir, bad: list | None = None) -> dict[int, dict]:
    """Every rank's heartbeat by rank (fields of the wrong type dropped and named in ``bad``); a file that
    is oversized, torn or without an int rank and a numeric time is skipped."""
    beats = {}
    for path in sorted(run.heartbeats.glob(HEARTBEAT_GLOB)):
        try:
            if path.stat().st_size > MAX_LINE_BYTES:
                continue
            beat = json.loads(path.read_text())
            beat = typed(beat, HEARTBEAT_FIELDS, bad if bad is not None else [])
            rank = beat["rank"]
            if isinstance(rank, int) and number(beat.get("time")) is not None:
                beats[rank] = beat
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return beats


def read_exit_record(run: RunDir) -> dict | None:
    """How the ranks last exited ({"code", "reason", "message"}), None when unknown."""
    return _json_object(run.exit_record)


def supervised(run: RunDir, alive: Callable[[int], bool], host: str) -> bool:
    """A live supervisor owns this run's ranks (on another host: assumed live while its file is there)."""
    data = _json_object(run.supervisor)
    if data is None or not isinstance(data.get("pid"), int):
        return False
    return data.get("host") != host or alive(data["pid"])


def latest_checkpoint_facts(run: RunDir) -> dict:
    """The step, creation time and tag of the checkpoint ``latest`` names, from its manifest."""
    tag = run.latest_tag()
    if not tag or "/" in tag or tag.startswith("."):
        return {}
    manifest = _json_object(run.manifest(tag))
    return {k: manifest.get(k) for k in ("step", "created", "tag")} if manifest is not None else {}


def last_checkpoint_bytes(run: RunDir) -> int | None:
    """The size of the newest save in ``telemetry/checkpoints.jsonl`` (the disk detector's next-save guess)."""
    path = run.checkpoint_log
    records, _ = read_tail(path, 50) if path.exists() else ([], 0)
    saves = [r for r in records if r.get("kind") == "save" and number(r.get("bytes"))]
    return int(saves[-1]["bytes"]) if saves else None


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie (this host only): is a heartbeat's or a supervisor's pid live."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _json_object(path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
