"""Throughput drops: change detection relative to the run's own noise.

A fixed ratio (warn below 0.7x) misses what matters on a big run — one slow GPU makes the whole job 5 %
slower for weeks, against step-time noise of a fraction of a percent — and would page on a noisy CPU box.
So the detector works in the run's own units:

- ``y``: the log of tokens/s, smoothed by the median of the last ``smooth_records`` (single slow steps —
  a checkpoint save, an eval, a data hiccup, even a few close together as in real runs — never move it);
- the level and the noise: median and MAD (x 1.4826) of the last ``baseline_records`` normal values of
  ``y`` (a moving reference: slow drifts are followed; frozen while a drop is suspected or open);
- a one-sided CUSUM of the drop ``level - y`` with an allowance of ``allowance`` x the smallest shift that
  matters, ``shift = max(min_drop, z x noise)``: it fires when the accumulated drop passes ``h x shift``. A 5 % drop
  against 0.4 % noise fires within a few records, a 2 % one within a few dozen, a 5 % drop on a box with
  20 % noise never (nor does anything that is within its noise).

One slowdown is one problem however long it lasts (key ``ThroughputDrop``): reported every pass while it
lasts, resolved once when throughput is back within the allowance for ``recover_records``. A new level that
stays stable for ``accept_after_records`` (a changed batch size, another node type after a resume) is
accepted as the run's new normal and the problem resolved, saying so. The state is plain JSON, so a
restarted watchdog resumes where it was.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections import deque
from dataclasses import dataclass

from bigops.watchdog.detectors.robust import MAD_TO_SIGMA
from bigops.watchdog.findings import Finding

KEY = "ThroughputDrop"


@dataclass(frozen=True)
class ThroughputConfig:
    smooth_records: int = 15
    allowance: float = 0.75
    """The CUSUM's allowance per record, as a fraction of the smallest relevant shift (drops below it
    never accumulate)."""
    baseline_records: int = 200
    min_baseline_records: int = 50
    min_drop: float = 0.02
    """Drops smaller than this fraction are never a finding, however quiet the run."""
    z: float = 5.0
    """... nor drops within this many noise sigmas."""
    h: float = 5.0
    """The CUSUM fires at ``h`` x the smallest relevant shift accumulated."""
    recover_records: int = 20
    accept_after_records: int = 2000
    # kept for the configurations that set them: the old fixed-ratio rule's fields
    recent_records: int = 20
    ratio: float = 0.0
    """If > 0, also warn when the smoothed throughput falls below this fraction of the level at once."""


class ThroughputDetector:
    def __init__(self, config: ThroughputConfig = ThroughputConfig()):
        self.config = config
        self.raw: deque[float] = deque(maxlen=config.smooth_records)
        self.baseline: deque[float] = deque(maxlen=config.baseline_records)
        self.sorted: list[float] = []
        self.cusum = 0.0
        self.episode: dict | None = None
        self.quiet = 0
        self.resolved: list[Finding] = []

    # ------------------------------------------------------------------------------------- the statistics
    def _add_baseline(self, y: float) -> None:
        if len(self.baseline) == self.baseline.maxlen:
            old = self.baseline[0]
            del self.sorted[bisect.bisect_left(self.sorted, old)]
        self.baseline.append(y)
        bisect.insort(self.sorted, y)

    def level_noise(self) -> tuple[float, float]:
        data = self.sorted
        level = statistics.median(data)
        # MAD without a second sort: the median of |y - level| over a sorted list
        deviations = sorted(abs(v - level) for v in data)
        return level, MAD_TO_SIGMA * statistics.median(deviations)

    def shift(self, noise: float) -> float:
        return max(math.log1p(self.config.min_drop), self.config.z * noise)

    # ----------------------------------------------------------------------------------------- the stream
    def update(self, step: int, tokens_per_second: float | None, step_seconds: float | None = None) -> None:
        c = self.config
        if not isinstance(tokens_per_second, (int, float)) or isinstance(tokens_per_second, bool) \
                or not math.isfinite(tokens_per_second) or tokens_per_second <= 0:
            return
        self.raw.append(math.log(tokens_per_second))
        if len(self.raw) < self.raw.maxlen:
            return
        y = statistics.median(self.raw)
        if len(self.baseline) < c.min_baseline_records:
            self._add_baseline(y)
            return
        level, noise = self.level_noise()
        shift = self.shift(noise)
        drop = level - y
        self.cusum = max(0.0, self.cusum + drop - c.allowance * shift)
        fired = self.cusum > c.h * shift or (c.ratio > 0 and math.exp(-drop) < c.ratio)
        if self.episode is None:
            if fired:
                self.episode = {"since_step": step, "level": level, "noise": noise, "shift": shift,
                                "worst": drop, "records": 0, "stable": 0, "last": y}
            elif self.cusum == 0.0:
                self._add_baseline(y)  # only values with no drop building up move the reference
            return
        e = self.episode
        e["records"] += 1
        e["worst"] = max(e["worst"], drop)
        e["stable"] = e["stable"] + 1 if abs(y - e["last"]) < shift / 2 else 0
        e["last"], e["step"], e["drop"] = y, step, drop
        if drop < shift / 2:
            self.quiet += 1
            if self.quiet >= c.recover_records:
                self._end(step, f"throughput back to {math.exp(y):,.0f} tokens/s at step {step} (level "
                                f"{math.exp(level):,.0f})")
            return
        self.quiet = 0
        if e["stable"] >= c.accept_after_records:
            self._end(step, f"a stable new level of {math.exp(y):,.0f} tokens/s since about step "
                            f"{step - e['stable']}: accepted as the run's normal")
            self.baseline.clear()
            self.sorted.clear()

    def _end(self, step: int, why: str) -> None:
        e, self.episode = self.episode, None
        self.cusum, self.quiet = 0.0, 0
        self.resolved.append(Finding("ThroughputDrop", "info", why, key=KEY, step=step, resolved=True,
                                     evidence={"since_step": e["since_step"], "worst_drop": 1 - math.exp(-e["worst"])}))

    def current(self) -> list[Finding]:
        """The open slowdown (every pass while it lasts), and slowdowns that ended since the last call."""
        out, self.resolved = self.resolved, []
        e = self.episode
        if e is not None:
            level = math.exp(e["level"])
            now = math.exp(e["last"])
            fraction = 1 - now / level
            out.append(Finding(
                "ThroughputDrop", "warning", f"{now:,.0f} tokens/s since step {e['since_step']}: {fraction:.1%} below "
                f"the run's level of {level:,.0f} (noise {e['noise']:.2%}, smallest drop that counts "
                f"{math.expm1(e['shift']):.1%})", key=KEY, step=e.get("step", e["since_step"]),
                evidence={"recent_median": now, "baseline_median": level, "ratio": now / level, "drop": fraction,
                          "noise": e["noise"], "since_step": e["since_step"], "worst_drop": 1 - math.exp(-e["worst"])}))
        return out

    # ------------------------------------------------------------------------------------------ the state
    def to_json(self) -> dict:
        return {"raw": list(self.raw), "baseline": list(self.baseline), "cusum": self.cusum,
                "episode": self.episode, "quiet": self.quiet}

    @classmethod
    def from_json(cls, data: dict, config: ThroughputConfig = ThroughputConfig()) -> "ThroughputDetector":
        d = cls(config)
        if not isinstance(data, dict):
            return d
        numbers = lambda xs: [float(x) for x in xs if isinstance(x, (int, float)) and math.isfinite(x)] \
            if isinstance(xs, list) else []  # noqa: E731
        d.raw.extend(numbers(data.get("raw")))
        for y in numbers(data.get("baseline")):
            d._add_baseline(y)
        cusum = data.get("cusum")
        d.cusum = float(cusum) if isinstance(cusum, (int, float)) and math.isfinite(cusum) else 0.0
        d.episode = data.get("episode") if isinstance(data.get("episode"), dict) else None
        d.quiet = data.get("quiet") if isinstance(data.get("quiet"), int) else 0
        return d


def detect_throughput_drop(records: list[tuple[int, float]], config: ThroughputConfig = ThroughputConfig()
                           ) -> list[Finding]:
    """``records``: (step, tokens_per_second), oldest first -> the slowdown open at the end (stateless use)."""
    detector = ThroughputDetector(config)
    for step, value in records:
        detector.update(step, value)
    return [f for f in detector.current() if not f.resolved]
