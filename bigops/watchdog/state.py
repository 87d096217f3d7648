"""What the daemon remembers across its own restarts: which problems it already reported."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from bigops.watchdog.findings import SEVERITIES, Finding
from trainer.rundir import atomic_write_text


@dataclass
class WatchState:
    path: Path
    reported: dict[str, dict] = field(default_factory=dict)
    restarts: list[dict] = field(default_factory=list)
    """Automatic restarts so far: {"time", "from_step", "reason"} (the budget and progress guards)."""
    handled: dict[str, dict] = field(default_factory=dict)
    """Finding keys an action was already taken for (never act twice, even after our own restart)."""
    pending: dict[str, dict] = field(default_factory=dict)
    """Actions asked for (``watchdog.on_* = "ask"``), by id: pending -> approved/denied -> done
    (see ``bigops.watchdog.approvals``)."""

    @classmethod
    def load(cls, path: Path) -> "WatchState":
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError("not an object")
        except FileNotFoundError:
            data = {}
        except (OSError, ValueError):
            # A damaged state file must not stop the watchdog: start afresh, keep the bad file aside.
            path.replace(path.with_suffix(".damaged"))
            data = {}

        def typed(key, kind):
            value = data.get(key)
            return value if isinstance(value, kind) else kind()
        return cls(path=path, reported=typed("reported", dict), restarts=typed("restarts", list),
                   handled=typed("handled", dict), pending=typed("pending", dict))

    def is_new(self, finding: Finding) -> bool:
        """New, or the same problem grown more severe (a blip that became a spike keeps its key...)."""
        before = self.reported.get(finding.key)
        if before is None:
            return True
        return SEVERITIES.index(finding.severity) > SEVERITIES.index(before.get("severity", "info"))

    def remember(self, finding: Finding, now: float) -> None:
        before = self.reported.get(finding.key, {})
        self.reported[finding.key] = {"kind": finding.kind, "severity": finding.severity,
                                      "first_seen": before.get("first_seen", now), "last_seen": now}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"reported": self.reported, "restarts": self.restarts, "handled": self.handled,
                "pending": self.pending}
        atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n")
