"""NaN/Inf loss or grad norm, and steps skipped in a row (the trainer skips non-finite updates)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from bigops.watchdog.findings import Finding


@dataclass(frozen=True)
class NonFiniteConfig:
    skipped_in_a_row: int = 3
    """This many skipped steps in a row is critical (one is a warning)."""


class NonFiniteDetector:
    def __init__(self, config: NonFiniteConfig = NonFiniteConfig()):
        self.config = config
        self.streak = 0
        self.streak_start: int | None = None

    def update(self, step: int, loss: float | None, grad_norm: float | None, skipped: bool = False) -> list[Finding]:
        bad = [name for name, v in (("loss", loss), ("grad_norm", grad_norm))
               if v is not None and not math.isfinite(v)]
        if not bad and not skipped:
            self.streak, self.streak_start = 0, None
            return []
        if self.streak == 0:
            self.streak_start = step
        self.streak += 1
        what = " and ".join(f"{n}={v}" for n, v in (("loss", loss), ("grad_norm", grad_norm)) if n in bad) \
            or "the optimizer step was skipped"
        critical = self.streak >= self.config.skipped_in_a_row
        return [Finding("NonFiniteLoss" if "loss" in bad else "SkippedSteps" if not bad else "NonFiniteGradNorm",
                        "critical" if critical else "warning",
                        f"step {step}: {what} ({self.streak} bad step(s) in a row since step {self.streak_start})",
                        key=f"NonFinite:{self.streak_start}", step=step,
                        evidence={"loss": loss, "grad_norm": grad_norm, "skipped": skipped, "streak": self.streak,
                                  "streak_start": self.streak_start})]
