"""Grad-norm spikes: a gradient norm many times its recent median (on a log scale, robust).

Often the first sign of a divergence, records before the loss moves (BLOOM-104B: 89k -> 1.5M -> 3.3M at
8739-8741 while the loss went 3.4 -> 3.7 -> 7.3). A warning: it pages only together with a loss spike.

One run-level identity, ``GradNormSpike``: a grad norm that oscillates for 200 steps is one episode, which
ends (a ``resolved=True`` finding) only after ``end_records`` normal records in a row. The open episode is
reported on every pass (``current``). The state is plain JSON (``to_json``/``from_json``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bigops.watchdog.detectors.robust import MAD_TO_SIGMA, SortedWindow
from bigops.watchdog.findings import Finding

KEY = "GradNormSpike"


@dataclass(frozen=True)
class GradNormConfig:
    window: int = 100
    min_history: int = 10
    warmup_records: int = 50
    z: float = 8.0
    min_ratio: float = 10.0
    """A spike is at least this many times the median, whatever the spread."""
    end_records: int = 50
    """The episode is over after this many normal grad norms in a row."""


class GradNormSpikeDetector:
    def __init__(self, config: GradNormConfig = GradNormConfig()):
        self.config = config
        self.window = SortedWindow(config.window)  # log10 of recent normal grad norms
        self.seen = 0
        self.episode: dict | None = None

    def to_json(self) -> dict:
        return {"window": self.window.to_json(), "seen": self.seen, "episode": self.episode}

    @classmethod
    def from_json(cls, data: dict, config: GradNormConfig = GradNormConfig()) -> "GradNormSpikeDetector":
        d = cls(config)
        for v in data.get("window") or []:
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                d.window.add(float(v))
        seen = data.get("seen")
        d.seen = seen if isinstance(seen, int) and not isinstance(seen, bool) else 0
        d.episode = data.get("episode") if isinstance(data.get("episode"), dict) else None
        return d

    def _finding(self) -> Finding:
        e = self.episode
        return Finding("GradNormSpike", "warning", f"grad norm {e['grad_norm']:.4g} at step {e['step']}: "
                       f"{e['ratio']:.0f}x its recent median {e['median']:.4g} (episode since step {e['episode_start']}, "
                       f"{e['spikes']} spike record(s))", key=KEY, step=e["step"], evidence=dict(e))

    def current(self) -> list[Finding]:
        return [self._finding()] if self.episode is not None else []

    def update(self, step: int, grad_norm: float | None) -> list[Finding]:
        self.seen += 1
        c = self.config
        if grad_norm is None or not math.isfinite(grad_norm) or grad_norm <= 0:
            return []
        value = math.log10(grad_norm)
        if self.seen <= c.warmup_records or len(self.window) < c.min_history:
            self.window.add(value)
            return []
        median, mad = self.window.stats()
        bar = median + max(c.z * MAD_TO_SIGMA * mad, math.log10(c.min_ratio))
        if value <= bar:
            self.window.add(value)
            e = self.episode
            if e is not None:
                e["normal_run"] += 1
                if e["normal_run"] >= c.end_records:
                    self.episode = None
                    return [Finding("GradNormSpike", "info", f"grad norm back to normal since step "
                                    f"{step - c.end_records + 1} (episode from step {e['episode_start']})", key=KEY,
                                    step=step, resolved=True, evidence={**e, "recovered_step": step})]
            return []
        first = self.episode is None
        ratio = grad_norm / 10 ** median
        if first:
            self.episode = {"episode_start": step, "spikes": 0, "peak_ratio": ratio}
        e = self.episode
        e.update(grad_norm=grad_norm, median=10 ** median, ratio=ratio, step=step, normal_run=0, first=first,
                 spikes=e["spikes"] + 1, peak_ratio=max(e["peak_ratio"], ratio))
        return [self._finding()] if first else []
