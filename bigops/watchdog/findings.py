"""What a detector reports: one problem, with its evidence, in one line for the person on call."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SEVERITIES = ("info", "warning", "critical")


@dataclass(frozen=True)
class Finding:
    kind: str
    """Detector name, also the alert and runbook name (e.g. ``LossSpike``)."""
    severity: str
    """info (logged, no page), warning (chat), critical (page)."""
    summary: str
    """One line: what was seen."""
    key: str
    """The problem's identity (``bigops.watchdog.incidents``): stable while the problem lasts — a resource,
    a launch, an episode — never a step or window start that moves while it goes on."""
    step: int | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    resolved: bool = False
    """The detector says this problem is over now (its incident is resolved at once, not after the quiet
    period)."""

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} not in {SEVERITIES}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
