"""TP layer-norm desync: TP-duplicated parameters that drifted apart across TP ranks (BLOOM-176B, 2022)."""

from __future__ import annotations

from dataclasses import dataclass

from bigops.watchdog.findings import Finding


@dataclass(frozen=True)
class DesyncConfig:
    threshold: float = 1e-6
    """Above this max |diff| the watchdog asks for a live sync. In sync runs measure exactly 0."""


def detect_desync(step: int, ln_desync: float | None, config: DesyncConfig = DesyncConfig()) -> list[Finding]:
    if ln_desync is None or ln_desync <= config.threshold:
        return []
    return [Finding("TPDesync", "warning", f"TP-duplicated parameters differ across TP ranks by up to "
                    f"{ln_desync:.3g} at step {step} (threshold {config.threshold:g})", key="TPDesync",
                    step=step, evidence={"ln_desync": ln_desync, "threshold": config.threshold})]
