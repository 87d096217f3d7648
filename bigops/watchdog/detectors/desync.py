"""TP layer-norm desync: TP-duplicated parameters that drifted apart across TP ranks (BLOOM-176B, 2022)."""

from __future__ import annotations

from dataclasses import dataclass

from bigops.watchdog.findings import Finding
from trainer.config import WatchdogConfig


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
    """``since_step``: first step of this episode (the key: a drift that comes back after a sync is a new
    problem, acted on again); default ``step``."""
    if ln_desync is None or ln_desync <= config.threshold:
        return []
    since = step if since_step is None else since_step
    return [Finding("TPDesync", "warning", f"TP-duplicated parameters differ across TP ranks by up to "
                    f"{ln_desync:.3g} at step {step} (threshold {config.threshold:g}, above it since step {since})",
                    key=f"TPDesync:{since}", step=step,
                    evidence={"ln_desync": ln_desync, "threshold": config.threshold, "since_step": since})]
