"""Grad-norm spikes: a gradient norm many times its recent median (on a log scale, robust).

Often the first sign of a divergence, records before the loss moves (BLOOM-104B: 89k -> 1.5M -> 3.3M at
8739-8741 while the loss went 3.4 -> 3.7 -> 7.3). A warning: it pages only together with a loss spike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bigops.watchdog.detectors.robust import MAD_TO_SIGMA, Window
from bigops.watchdog.findings import Finding


@dataclass(frozen=True)
class GradNormConfig:
    window: int = 100
    min_history: int = 10
    warmup_records: int = 50
    z: float = 8.0
    min_ratio: float = 10.0
    """A spike is at least this many times the median, whatever the spread."""


class GradNormSpikeDetector:
    def __init__(self, config: GradNormConfig = GradNormConfig()):
        self.config = config
        self.window = Window(config.window)  # log10 of recent normal grad norms
        self.seen = 0
        self.episode_start: int | None = None

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
            self.episode_start = None
            return []
        first = self.episode_start is None
        if first:
            self.episode_start = step
        ratio = grad_norm / 10 ** median
        return [Finding("GradNormSpike", "warning", f"grad norm {grad_norm:.4g} at step {step}: {ratio:.0f}x its "
                        f"recent median {10 ** median:.4g}", key=f"GradNormSpike:{self.episode_start}", step=step,
                        evidence={"grad_norm": grad_norm, "median": 10 ** median, "ratio": ratio,
                                  "episode_start": self.episode_start, "first": first})]
