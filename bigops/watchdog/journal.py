"""The watchdog's write-ahead journal: an intent is on disk before anything is done about it.

One file per intent, ``RUN/watchdog/intents/<id>.json``, rewritten atomically (temp file, fsync, rename,
fsync of the directory) at ``begin`` and after each step; at ``done`` it is rewritten with its outcome and
moved (atomic rename) to ``intents/done/``. Why one file per intent rather than an appended
``journal.jsonl``: an intent's whole state (its parameters, the steps done, the outcome) is always one
complete JSON document — no torn last line to repair, no replay of a growing log to know what is in
flight, no compaction — and the intents in flight are exactly the files left in ``intents/`` (one short
directory listing, however long the run: the done ones, a few hundred over months, are out of the way).

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
        self.dir = rundir.RunDir(run_root).intents

    @property
    def done_dir(self) -> Path:
        return self.dir / "done"

    def path(self, iid: str) -> Path:
        return self.dir / f"{iid}.json"

    def exists(self, iid: str) -> bool:
        return self.path(iid).exists() or (self.done_dir / f"{iid}.json").exists()

    def get(self, iid: str) -> dict | None:
        for path in (self.path(iid), self.done_dir / f"{iid}.json"):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and data.get("id") == iid:
                return data
        return None

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
        self._write(intent)  # done where it is first: a death before the move leaves a done intent, not one in flight
        self.done_dir.mkdir(parents=True, exist_ok=True)
        os.replace(self.path(intent["id"]), self.done_dir / f"{intent['id']}.json")
        _fsync_dir(self.done_dir)
        _fsync_dir(self.dir)

    def intents(self, action: str | None = None, status: str | None = None) -> list[dict]:
        """All intents (oldest first), optionally of one action / status."""
        folders = (self.dir,) if status == BEGUN else (self.dir, self.done_dir)
        out = {}
        for folder in folders:
            for path in folder.glob("*.json") if folder.is_dir() else ():
                try:
                    intent = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
                if isinstance(intent, dict) and intent.get("id") == path.stem \
                        and (action is None or intent.get("action") == action) \
                        and (status is None or intent.get("status") == status):
                    out[path.stem] = intent
        return sorted(out.values(), key=lambda i: (i.get("begun", 0), i["id"]))

    def in_flight(self) -> list[dict]:
        """The intents begun and not done (the files left in ``intents/``)."""
        return self.intents(status=BEGUN)

    def handled(self) -> frozenset[str]:
        """Incident ids an intent exists for."""
        return frozenset(i["incident"] for i in self.intents() if i.get("incident"))
