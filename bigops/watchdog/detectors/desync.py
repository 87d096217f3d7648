"""TP layer-norm desync: TP-duplicated parameters that drifted apart across TP ranks (BLOOM-176B, 2022).

One run-level identity, ``TPDesync``: the drift is reported on every pass while the last measurement is
above the threshold, and a ``resolved=True`` finding says when it is back under it (after a sync); a drift
that comes back after that opens a new incident, acted on again.
"""

from __future__ import annotations

from dataclasses import dataclass

from bigops.watchdog.findings import Finding
from trainer.config import WatchdogConfig

KEY = "TPDesync"


@dataclass(frozen=True)
class DesyncConfig:
    threshold: float = WatchdogConfig.desync_threshold
    """Above this max |diff| the watchdog asks for a live sync (``watchdog.desync_threshold``, the one
    default). In sync runs it measures exactly 0."""


def desync_episode_start(records: list[tuple[int, float]], threshold: float) -> int | None:
    """The first step of the current run of measurements above the threshold (None: the last is below)."""
    start = None
    for step, value in reversed(records):
        if value <= threshold:
            break
        start = step
    return start


def detect_desync(step: int, ln_desync: float | None, config: DesyncConfig = DesyncConfig(),
                  since_step: int | None = None) -> list[Finding]:
    """``since_step``: first step of this episode (evidence; default ``step``)."""
    if ln_desync is None or ln_desync <= config.threshold:
        return []
    since = step if since_step is None else since_step
    return [Finding("TPDesync", "warning", f"TP-duplicated parameters differ across TP ranks by up to "
                    f"{ln_desync:.3g} at step {step} (threshold {config.threshold:g}, above it since step {since})",
                    key=KEY, step=step,
                    evidence={"ln_desync": ln_desync, "threshold": config.threshold, "since_step": since})]


class DesyncTracker:
    """Streaming: fed each ``ln_desync`` measurement; state {"since", "step", "value"} (plain JSON)."""

    def __init__(self, config: DesyncConfig = DesyncConfig(), state: dict | None = None):
        self.config = config
        state = state if isinstance(state, dict) else {}
        self.open: dict | None = state.get("open") if isinstance(state.get("open"), dict) else None

    def to_json(self) -> dict:
        return {"open": self.open}

    def current(self) -> list[Finding]:
        o = self.open
        return detect_desync(o["step"], o["value"], self.config, since_step=o["since"]) if o else []

    def update(self, step: int, value: float) -> list[Finding]:
        if value > self.config.threshold:
            first = self.open is None
            self.open = {"since": step if first else self.open["since"], "step": step, "value": value}
            return self.current() if first else []
        if self.open is None:
            return []
        o, self.open = self.open, None
        return [Finding("TPDesync", "info", f"TP-duplicated parameters back in sync at step {step} ({value:.3g} <= "
                        f"{self.config.threshold:g}; above it from step {o['since']})", key=KEY, step=step,
                        resolved=True, evidence={"ln_desync": value, "threshold": self.config.threshold,
                                                 "since_step": o["since"], "recovered_step": step})]
