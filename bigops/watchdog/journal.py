"""The watchdog's write-ahead journal: an intent is on disk before anything is done about it.

One file per intent, ``RUN/watchdog/intents/<id>.json``, rewritten atomically (temp file, fsync, rename,
fsync of the directory) at ``begin``, after each step and at ``done``. Why one file per intent rather
than an appended ``journal.jsonl``: an intent's whole state (its parameters, the steps done, the outcome)
is always one complete JSON document — no torn last line to repair, no replay of a growing log to know
what is in flight, no compaction — and finding the intents in flight is one directory listing. The cost,
one small file per action, is a few hundred files over a months-long run.

An intent's id is derived from what it acts on (``intent_id(action, incident)``): beginning the same
action for the same incident again finds the existing intent instead of making a second one, so an
incident is acted on at most once even across restarts of the watchdog.

Record: ``{"id", "action", "incident", "params", "status": "begun"|"done", "begun", "pid", "steps":
{name: {"time", ...}}, "outcome", "done_at"}``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path

from trainer import rundir

BEGUN, DONE = "begun", "done"


def intent_id(action: str, incident: str | None) -> str:
    """Deterministic for an incident (at most once), random without one."""
    if incident is None:
        return uuid.uuid4().hex[:12]
    return hashlib.sha1(f"{action}:{incident}".encode()).hexdigest()[:12]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Journal:
    def __init__(self, run_root: Path):
        self.dir = Path(run_root) / "watchdog" / "intents"

    def path(self, iid: str) -> Path:
        return self.dir / f"{iid}.json"

    def get(self, iid: str) -> dict | None:
        try:
            data = json.loads(self.path(iid).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("id") == iid else None

    def _write(self, intent: dict) -> None:
        rundir.atomic_write_text(self.path(intent["id"]), json.dumps(intent, sort_keys=True) + "\n")
        _fsync_dir(self.dir)

    def begin(self, action: str, params: dict, incident: str | None = None, iid: str | None = None,
              now: float | None = None) -> tuple[dict, bool]:
        """The intent (written, durable, before the caller acts) and whether it is new. An intent of the
        same id already there (begun or done) is returned as it is: the caller finishes it, or does nothing."""
        iid = iid or intent_id(action, incident)
        existing = self.get(iid)
        if existing is not None:
            return existing, False
        intent = {"id": iid, "action": action, "incident": incident, "params": params, "status": BEGUN,
                  "begun": time.time() if now is None else now, "pid": os.getpid(), "steps": {}}
        self._write(intent)
        return intent, True

    def step(self, intent: dict, name: str, **result) -> None:
        intent["steps"][name] = {"time": time.time(), **result}
        self._write(intent)

    def done(self, intent: dict, outcome: str, now: float | None = None) -> None:
        intent.update(status=DONE, outcome=outcome, done_at=time.time() if now is None else now)
        self._write(intent)

    def intents(self, action: str | None = None, status: str | None = None) -> list[dict]:
        """All intents (oldest first), optionally of one action / status."""
        if not self.dir.is_dir():
            return []
        out = []
        for path in self.dir.glob("*.json"):
            intent = self.get(path.stem)
            if intent is not None and (action is None or intent.get("action") == action) \
                    and (status is None or intent.get("status") == status):
                out.append(intent)
        return sorted(out, key=lambda i: (i.get("begun", 0), i["id"]))

    def in_flight(self) -> list[dict]:
        return self.intents(status=BEGUN)

    def handled(self) -> frozenset[str]:
        """Incident ids an intent exists for."""
        return frozenset(i["incident"] for i in self.intents() if i.get("incident"))
