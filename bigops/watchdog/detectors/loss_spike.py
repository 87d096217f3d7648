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

Identity (``bigops.watchdog.incidents``): ``LossSpike:<segment>:<start_step>``. ``segment`` counts replays:
a record whose step is <= the previous one's (a rollback or a restart replays steps) starts a new segment,
so a spike that comes back in the replayed steps is a new incident, acted on again. A confirmed spike is
reported on every pass while it lasts (``current``) and once more, same key, ``resolved=True``, when it is
over (recovered, or its steps replayed). The state is plain JSON (``to_json``/``from_json``): the watchdog
carries it across passes and across its own restarts.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from bigops.watchdog.detectors.robust import MAD_TO_SIGMA, SortedWindow
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
        self.window: deque[float] = deque(maxlen=config.window)  # recent normal losses, in order
        self.level = SortedWindow(config.level_records)
        self.diffs = SortedWindow(max(1, config.window - 1))
        self.recent: deque[bool] = deque(maxlen=config.persist_window)
        self.seen = 0
        self.episode: dict | None = None
        self.segment = 0
        self.last_step: int | None = None

    # -- state -----------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"window": list(self.window), "recent": list(self.recent), "seen": self.seen,
                "episode": self.episode, "segment": self.segment, "last_step": self.last_step}

    @classmethod
    def from_json(cls, data: dict, config: LossSpikeConfig = LossSpikeConfig()) -> "LossSpikeDetector":
        d = cls(config)
        for v in data.get("window") or []:
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                d._add_normal(float(v))
        d.recent.extend(bool(v) for v in data.get("recent") or [])
        d.seen = _int(data.get("seen"), 0)
        d.episode = data.get("episode") if isinstance(data.get("episode"), dict) else None
        d.segment = _int(data.get("segment"), 0)
        d.last_step = _int(data.get("last_step"), None)
        return d

    # -- statistics ------------------------------------------------------------------------------------
    def _add_normal(self, loss: float) -> None:
        if not math.isfinite(loss):
            return
        if self.window:
            self.diffs.add(loss - self.window[-1])
        self.window.append(loss)
        self.level.add(loss)

    def bar(self) -> tuple[float, float]:
        c = self.config
        level = self.level.median()
        sigma = MAD_TO_SIGMA * self.diffs.mad() / math.sqrt(2) if len(self.diffs) >= 2 else 0.0
        return level, level + max(c.z * sigma, c.rel * abs(level), c.abs)

    # -- findings --------------------------------------------------------------------------------------
    def key(self, e: dict) -> str:
        return f"LossSpike:{e.get('segment', self.segment)}:{e['start_step']}"

    def _spike(self, e: dict) -> Finding:
        return Finding("LossSpike", "critical",
                       f"loss spike since step {e['start_step']}: peak {e['peak']:.3f}, {e['high_records']} "
                       f"record(s) above {e['bar']:.3f} (median before {e['baseline']:.3f})",
                       key=self.key(e), step=e["start_step"], evidence=dict(e))

    def _over(self, e: dict, step: int, why: str) -> Finding:
        return Finding("LossSpike", "info", f"loss spike from step {e['start_step']} over at step {step}: {why}",
                       key=self.key(e), step=step, resolved=True,
                       evidence={**e, "recovered_step": step, "steps": step - e["start_step"], "peak": e["peak"]})

    def current(self) -> list[Finding]:
        """The problem now: the open confirmed spike, if any (reported on every pass while it lasts)."""
        return [self._spike(self.episode)] if self.episode is not None and self.episode.get("confirmed") else []

    def update(self, step: int, loss: float) -> list[Finding]:
        """Feed one record; returns the findings it completes (in order)."""
        out: list[Finding] = []
        if self.last_step is not None and step <= self.last_step:
            self.segment += 1  # steps replayed: whatever comes now is a new episode
            e, self.episode = self.episode, None
            self.recent.clear()
            if e is not None and e.get("confirmed"):
                out.append(self._over(e, step, f"steps replayed from {step} (rollback or restart)"))
        self.last_step = step
        self.seen += 1
        c = self.config
        if not math.isfinite(loss):
            return out  # the non-finite detector owns NaN/Inf
        if self.seen <= c.warmup_records or len(self.window) < c.min_history:
            self._add_normal(loss)
            return out
        baseline, bar = self.bar() if self.episode is None else (self.episode["baseline"], self.episode["bar"])
        high = loss > bar
        self.recent.append(high)
        if high:
            if self.episode is None:
                self.episode = {"start_step": step, "segment": self.segment, "baseline": baseline, "bar": bar,
                                "peak": loss, "high_records": 0, "confirmed": False}
            e = self.episode
            e["peak"], e["high_records"] = max(e["peak"], loss), e["high_records"] + 1
            if not e["confirmed"] and sum(self.recent) >= c.persist_records:
                e["confirmed"], e["confirmed_step"] = True, step
                out.append(self._spike(e))
            return out
        self._add_normal(loss)
        if self.episode is not None and not any(self.recent) and len(self.recent) == c.persist_window:
            e, self.episode = self.episode, None
            if e["confirmed"]:
                out.append(self._over(e, step, f"loss back under {e['bar']:.3f}"))
            else:
                out.append(Finding("LossBlip", "info", f"loss blip at step {e['start_step']}: {e['peak']:.3f} vs "
                                   f"median {e['baseline']:.3f}, recovered", key=f"LossBlip:{e['segment']}:"
                                   f"{e['start_step']}", step=e["start_step"], evidence={**e, "recovered_step": step}))
        return out


def _int(value, default):
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def scan(records: list[tuple[int, float]], config: LossSpikeConfig = LossSpikeConfig()) -> list[Finding]:
    detector = LossSpikeDetector(config)
    return [f for step, loss in records for f in detector.update(step, loss)]
