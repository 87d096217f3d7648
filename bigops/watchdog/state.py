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

    @classmethod
    def load(cls, path: Path) -> "WatchState":
        try:
            data = json.loads(path.read_text())
            reported = data.get("reported", {}) if isinstance(data, dict) else {}
            if not isinstance(reported, dict):
                reported = {}
        except FileNotFoundError:
            reported = {}
        except (OSError, ValueError):
            # A damaged state file must not stop the watchdog: start afresh, keep the bad file aside.
            path.replace(path.with_suffix(".damaged"))
            reported = {}
        return cls(path=path, reported=reported)

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
        atomic_write_text(self.path, json.dumps({"reported": self.reported}, indent=1, sort_keys=True) + "\n")
