"""Loss spikes: a loss far above its recent median, told apart as a blip (recovers) or a spike (persists).

A record is *high* when loss > level + max(z * sigma, rel * level, abs), where level is the median of the
last ``level_records`` normal (not high) losses and sigma the noise, 1.4826 x the MAD of successive
differences / sqrt(2) over the last ``window`` normal losses: robust (the spikes never move the bar) and
trend-free (a loss still falling fast early in training does not inflate the noise estimate). The first
``warmup_records`` are ignored (the loss falls fast there). High records open an episode; the episode is a
*spike* (critical: roll back past it) as soon as ``persist_records`` of the last ``persist_window`` records
are high — one bad record, or a loss that alternates between high and normal (BLOOM-104B at 8740-8743),
both count. An episode that ends (``persist_window`` normal records in a row) before that was a *blip*:
real runs have hundreds, from bad batches; logged, never paged. The episode's first high step is the
evidence a rollback needs.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass

from bigops.watchdog.detectors.robust import MAD_TO_SIGMA, Window, median_mad
from bigops.watchdog.findings import Finding


@dataclass(frozen=True)
class LossSpikeConfig:
    window: int = 100
    level_records: int = 20
    min_history: int = 10
    warmup_records: int = 50
    z: float = 8.0
    rel: float = 0.15
    abs: float = 0.3
    persist_records: int = 3
    persist_window: int = 5


class LossSpikeDetector:
    def __init__(self, config: LossSpikeConfig = LossSpikeConfig()):
        self.config = config
        self.window = Window(config.window)
        self.recent: deque[bool] = deque(maxlen=config.persist_window)
        self.seen = 0
        self.episode: dict | None = None

    def bar(self) -> tuple[float, float]:
        c = self.config
        values = list(self.window.values)
        level = statistics.median(values[-c.level_records:])
        diffs = [b - a for a, b in zip(values, values[1:])]
        sigma = MAD_TO_SIGMA * median_mad(diffs)[1] / math.sqrt(2) if len(diffs) >= 2 else 0.0
        return level, level + max(c.z * sigma, c.rel * abs(level), c.abs)

    def update(self, step: int, loss: float) -> list[Finding]:
        """Feed one record; returns the findings it completes."""
        self.seen += 1
        c = self.config
        if not math.isfinite(loss):
            return []  # the non-finite detector owns NaN/Inf
        if self.seen <= c.warmup_records or len(self.window) < c.min_history:
            self.window.add(loss)
            return []
        baseline, bar = self.bar() if self.episode is None else (self.episode["baseline"], self.episode["bar"])
        high = loss > bar
        self.recent.append(high)
        if high:
            if self.episode is None:
                self.episode = {"start_step": step, "baseline": baseline, "bar": bar, "peak": loss,
                                "high_records": 0, "confirmed": False}
            e = self.episode
            e["peak"], e["high_records"] = max(e["peak"], loss), e["high_records"] + 1
            if not e["confirmed"] and sum(self.recent) >= c.persist_records:
                e["confirmed"] = True
                return [Finding("LossSpike", "critical",
                                f"loss spike since step {e['start_step']}: peak {e['peak']:.3f}, {sum(self.recent)} "
                                f"of the last {len(self.recent)} records above {e['bar']:.3f} (median before "
                                f"{e['baseline']:.3f})", key=f"LossSpike:{e['start_step']}", step=e["start_step"],
                                evidence={**e, "confirmed_step": step})]
            return []
        self.window.add(loss)
        if self.episode is not None and not any(self.recent) and len(self.recent) == c.persist_window:
            e, self.episode = self.episode, None
            if e["confirmed"]:
                return [Finding("LossSpikeRecovered", "info", f"loss back under {e['bar']:.3f} at step {step} "
                                f"after the spike from step {e['start_step']}", key=f"LossSpike:{e['start_step']}",
                                step=step, evidence={**e, "recovered_step": step})]
            return [Finding("LossBlip", "info", f"loss blip at step {e['start_step']}: {e['peak']:.3f} vs median "
                            f"{e['baseline']:.3f}, recovered", key=f"LossBlip:{e['start_step']}",
                            step=e["start_step"], evidence={**e, "recovered_step": step})]
        return []


def scan(records: list[tuple[int, float]], config: LossSpikeConfig = LossSpikeConfig()) -> list[Finding]:
    detector = LossSpikeDetector(config)
    return [f for step, loss in records for f in detector.update(step, loss)]
