"""Throughput drops: tokens/s of the last few records well below the run's recent level.

Compared as medians (a single slow step, e.g. a checkpoint, does not count): recent = the last
``recent_records``, baseline = the ``baseline_records`` before them. A warning: something slowed down (a
throttled GPU, a slow node, a noisy neighbour on the filesystem).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from bigops.watchdog.findings import Finding


@dataclass(frozen=True)
class ThroughputConfig:
    recent_records: int = 20
    baseline_records: int = 200
    min_baseline_records: int = 50
    ratio: float = 0.7
    """Warn when recent / baseline falls below this."""


def detect_throughput_drop(records: list[tuple[int, float]], config: ThroughputConfig = ThroughputConfig()
                           ) -> list[Finding]:
    """``records``: (step, tokens_per_second), oldest first."""
    if len(records) < config.recent_records + config.min_baseline_records:
        return []
    recent = records[-config.recent_records:]
    baseline = records[-config.recent_records - config.baseline_records:-config.recent_records]
    now = statistics.median(v for _, v in recent)
    before = statistics.median(v for _, v in baseline)
    if before <= 0 or now / before >= config.ratio:
        return []
    start = recent[0][0]
    return [Finding("ThroughputDrop", "warning", f"{now:,.0f} tokens/s over the last {len(recent)} steps, "
                    f"{now / before:.0%} of the {before:,.0f} before", key="ThroughputDrop",
                    step=recent[-1][0], evidence={"recent_median": now, "baseline_median": before,
                                                  "ratio": now / before, "since_step": start})]
