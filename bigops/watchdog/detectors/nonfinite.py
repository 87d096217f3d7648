"""NaN/Inf loss or grad norm, and steps skipped in a row (the trainer skips non-finite updates).

One run-level identity, ``NonFinite``: a region of bad steps (NaN every third step is one region) is one
incident. It is reported when it opens and when it escalates (``skipped_in_a_row`` bad steps in a row:
critical), on every pass while it lasts (``current``), and ends with a ``resolved=True`` finding after
``clear_records`` good steps in a row. The state is plain JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bigops.watchdog.findings import Finding

KEY = "NonFinite"


@dataclass(frozen=True)
class NonFiniteConfig:
    skipped_in_a_row: int = 3
    """This many skipped steps in a row is critical (one is a warning)."""
    clear_records: int = 20
    """The region is over after this many good steps in a row."""


class NonFiniteDetector:
    def __init__(self, config: NonFiniteConfig = NonFiniteConfig()):
        self.config = config
        self.streak = 0
        self.streak_start: int | None = None
        self.region: dict | None = None

    def to_json(self) -> dict:
        return {"streak": self.streak, "streak_start": self.streak_start, "region": self.region}

    @classmethod
    def from_json(cls, data: dict, config: NonFiniteConfig = NonFiniteConfig()) -> "NonFiniteDetector":
        d = cls(config)
        streak, start = data.get("streak"), data.get("streak_start")
        d.streak = streak if isinstance(streak, int) and not isinstance(streak, bool) else 0
        d.streak_start = start if isinstance(start, int) and not isinstance(start, bool) else None
        d.region = data.get("region") if isinstance(data.get("region"), dict) else None
        return d

    def _finding(self) -> Finding:
        r = self.region
        return Finding(r["kind"], r["severity"], r["summary"], key=KEY, step=r["step"], evidence=dict(r["evidence"]))

    def current(self) -> list[Finding]:
        return [self._finding()] if self.region is not None else []

    def update(self, step: int, loss: float | None, grad_norm: float | None, skipped: bool = False) -> list[Finding]:
        bad = [name for name, v in (("loss", loss), ("grad_norm", grad_norm))
               if v is not None and not math.isfinite(v)]
        if not bad and not skipped:
            self.streak, self.streak_start = 0, None
            r = self.region
            if r is not None:
                r["good_run"] += 1
                if r["good_run"] >= self.config.clear_records:
                    self.region = None
                    return [Finding(r["kind"], "info", f"finite and not skipped again for {r['good_run']} steps "
                                    f"(bad steps since step {r['start']}: {r['bad_steps']})", key=KEY, step=step,
                                    resolved=True, evidence={**r["evidence"], "recovered_step": step,
                                                             "bad_steps": r["bad_steps"]})]
            return []
        if self.streak == 0:
            self.streak_start = step
        self.streak += 1
        what = " and ".join(f"{n}={v}" for n, v in (("loss", loss), ("grad_norm", grad_norm)) if n in bad) \
            or "the optimizer step was skipped"
        severity = "critical" if self.streak >= self.config.skipped_in_a_row else "warning"
        kind = "NonFiniteLoss" if "loss" in bad else "SkippedSteps" if not bad else "NonFiniteGradNorm"
        first = self.region is None
        escalates = not first and severity == "critical" and self.region["severity"] != "critical"
        if first:
            self.region = {"start": step, "bad_steps": 0, "severity": severity}
        r = self.region
        r.update(kind=kind, step=step, good_run=0, bad_steps=r["bad_steps"] + 1,
                 severity="critical" if "critical" in (severity, r["severity"]) else "warning",
                 summary=f"step {step}: {what} ({self.streak} bad step(s) in a row since step {self.streak_start}; "
                         f"bad steps since step {r['start']}: {r['bad_steps'] + 1})",
                 evidence={"loss": loss, "grad_norm": grad_norm, "skipped": skipped, "streak": self.streak,
                           "streak_start": self.streak_start, "region_start": r["start"]})
        return [self._finding()] if first or escalates else []
