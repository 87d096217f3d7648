"""Loss spikes: a loss far above its recent median, flagged early, then decided: a blip, a spike that
recovers by itself (watched), or a spike that persists or gets worse (critical: roll back past it).

A record is *high* when loss > level + max(z * sigma, rel * level, abs), where level is the median of the
last ``level_records`` normal (not high) losses and sigma the noise, 1.4826 x the MAD of successive
differences / sqrt(2) over the last ``window`` normal losses: robust (the spikes never move the bar) and
trend-free (a loss still falling fast early in training does not inflate the noise estimate). The first
``warmup_records`` are ignored (the loss falls fast there). High records open an episode:

- *suspected* (warning) as soon as ``persist_records`` of the last ``persist_window`` records are high —
  one bad record, or a loss that alternates between high and normal (BLOOM-104B at 8740-8743), both count;
- *confirmed* (critical: the one the supervisor rolls back on) when it has not recovered ``spike_patience``
  steps after its first high step (still persisting then), or when it gets worse first: a non-finite loss
  or grad norm, the grad norm past its own bar (``grad_spike``), or the loss rising past the first peak by
  ``worse_factor`` x (first peak - baseline). A real BLOOM-scale spike that recovers within ~30 iterations
  is watched, not rolled back: a rollback redoes the steps on every GPU and skips the data;
- *over* after ``persist_window`` normal records in a row, or when its steps are replayed: a suspected or
  confirmed spike gives one more finding with its key and ``resolved=True`` (how it ended, its peak, its
  cost in steps above the bar); an episode never suspected was a *blip* (info: real runs have hundreds).

Identity (``bigops.watchdog.incidents``): ``LossSpike:<segment>:<start_step>``. ``segment`` counts replays:
a record whose step is <= the previous one's (a rollback or a restart replays steps) starts a new segment,
so a spike that comes back in the replayed steps is a new incident, acted on again. An open spike is
reported on every pass while it lasts (``current``). The state is plain JSON (``to_json``/``from_json``):
the watchdog carries it across passes and across its own restarts.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from bigops.watchdog.detectors.robust import MAD_TO_SIGMA, SortedWindow
from bigops.watchdog.findings import Finding
from trainer.config import WatchdogConfig


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
    spike_patience: int = WatchdogConfig.spike_patience
    """Steps after its first high step a suspected spike may take to recover (``watchdog.spike_patience``)."""
    worse_factor: float = 1.5
    """Worse: the loss above the baseline by more than this many times the first peak's excess."""


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
        evidence = {**e, "patience_steps": self.config.spike_patience}
        if e.get("confirmed"):
            return Finding("LossSpike", "critical",
                           f"loss spike since step {e['start_step']}: peak {e['peak']:.3f}, {e.get('why') or 'confirmed'}"
                           f" (bar {e['bar']:.3f}, median before {e['baseline']:.3f})",
                           key=self.key(e), step=e["start_step"], evidence=evidence)
        return Finding("LossSpike", "warning",
                       f"suspected loss spike since step {e['start_step']}: peak {e['peak']:.3f} above {e['bar']:.3f}"
                       f" (median before {e['baseline']:.3f}); watched: rolled back only if not recovered by step "
                       f"{e['start_step'] + self.config.spike_patience} or worse",
                       key=self.key(e), step=e["start_step"], evidence=evidence)

    def _over(self, e: dict, step: int, why: str, replayed: bool = False) -> Finding:
        state = "confirmed" if e.get("confirmed") else "suspected"
        return Finding("LossSpike", "info", f"loss spike from step {e['start_step']} over at step {step}: {why} "
                       f"(peak {e['peak']:.3f}, {e.get('cost', e['high_records'])} step(s) above the bar, {state})",
                       key=self.key(e), step=step, resolved=True,
                       evidence={**e, "recovered_step": None if replayed else step, "replayed": replayed,
                                 "steps": step - e["start_step"], "outcome": state})

    def current(self) -> list[Finding]:
        """The problem now: the open spike (suspected or confirmed), reported on every pass while it lasts."""
        e = self.episode
        return [self._spike(e)] if e is not None and (e.get("suspected") or e.get("confirmed")) else []

    def _confirm(self, step: int, why: str) -> list[Finding]:
        e = self.episode
        e["confirmed"], e["confirmed_step"], e["why"] = True, step, why
        return [self._spike(e)]

    def update(self, step: int, loss: float, grad_norm: float | None = None,
               grad_spike: bool = False) -> list[Finding]:
        """Feed one record; returns the findings of the transitions it makes (suspected, confirmed, over)."""
        out: list[Finding] = []
        stride = step - self.last_step if self.last_step is not None and step > self.last_step else 1
        if self.last_step is not None and step <= self.last_step:
            self.segment += 1  # steps replayed: whatever comes now is a new episode
            e, self.episode = self.episode, None
            self.recent.clear()
            if e is not None and (e.get("suspected") or e.get("confirmed")):
                out.append(self._over(e, step, f"steps replayed from {step} (rollback or restart)", replayed=True))
        self.last_step = step
        self.seen += 1
        c = self.config
        e = self.episode
        if not math.isfinite(loss) or (grad_norm is not None and not math.isfinite(grad_norm)):
            # the non-finite detector reports the NaN/Inf itself; for an open spike it is "worse"
            if e is not None and (e.get("suspected") or e.get("confirmed")) and not e.get("confirmed"):
                out += self._confirm(step, "non-finite " + ("loss" if not math.isfinite(loss) else "grad norm"))
            return out
        if self.seen <= c.warmup_records or len(self.window) < c.min_history:
            self._add_normal(loss)
            return out
        baseline, bar = self.bar() if e is None else (e["baseline"], e["bar"])
        high = loss > bar
        self.recent.append(high)
        if high:
            if e is None:
                e = self.episode = {"start_step": step, "segment": self.segment, "baseline": baseline, "bar": bar,
                                    "peak": loss, "first_peak": None, "high_records": 0, "cost": 0,
                                    "suspected": False, "suspected_step": None, "confirmed": False,
                                    "confirmed_step": None, "why": None}
            e["peak"], e["high_records"] = max(e["peak"], loss), e["high_records"] + 1
            e["cost"] = e.get("cost", 0) + stride
        else:
            self._add_normal(loss)
            if e is not None and not any(self.recent) and len(self.recent) == c.persist_window:
                self.episode = None
                if e.get("suspected") or e.get("confirmed"):
                    out.append(self._over(e, step, f"loss back under {e['bar']:.3f}"))
                else:
                    out.append(Finding("LossBlip", "info", f"loss blip at step {e['start_step']}: {e['peak']:.3f} vs "
                                       f"median {e['baseline']:.3f}, recovered", key=f"LossBlip:{e['segment']}:"
                                       f"{e['start_step']}", step=e["start_step"],
                                       evidence={**e, "recovered_step": step}))
                return out
        if e is None or e.get("confirmed"):
            return out
        persisting = sum(self.recent) >= c.persist_records
        if not e.get("suspected") and persisting:
            e["suspected"], e["suspected_step"], e["first_peak"] = True, step, e["peak"]
            out.append(self._spike(e))
        if e.get("suspected"):
            first_peak = e.get("first_peak") if isinstance(e.get("first_peak"), (int, float)) else e["peak"]
            if high and persisting and step - e["start_step"] >= c.spike_patience:  # still above the bar now
                out += self._confirm(step, f"not recovered {step - e['start_step']} steps after it started "
                                           f"({sum(self.recent)} of the last {len(self.recent)} records above the bar)")
            elif grad_spike:
                out += self._confirm(step, "the grad norm exploded past its own bar")
            elif loss - e["baseline"] > c.worse_factor * (first_peak - e["baseline"]):
                out += self._confirm(step, f"the loss rose to {loss:.3f}, past the first peak {first_peak:.3f}")
        return out


def _int(value, default):
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def scan(records: list[tuple[int, float]], config: LossSpikeConfig = LossSpikeConfig()) -> list[Finding]:
    detector = LossSpikeDetector(config)
    return [f for step, loss in records for f in detector.update(step, loss)]
