"""Stragglers: a rank whose own compute (its module's forward calls per training step, ``forward_s`` in its
heartbeat) is well above that of the same pipeline stage in the other data-parallel replicas.

Waits for other ranks happen outside the forward (pipeline p2p, the gradient all-reduce), so a slow GPU,
a throttled node or a noisy neighbour shows up as a larger ``forward_s`` on that rank only. Inside a TP
group the all-reduces inside the forward make the TP peers look alike: the unit compared is the TP group
(ranks of one stage and one ``dp_rank``), the slowest rank in it is named, "(or its TP group)" when TP > 1.
A warning: the run goes on at the straggler's pace.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from bigops.watchdog.findings import Finding


@dataclass(frozen=True)
class StragglerConfig:
    factor: float = 1.5
    """A straggler's median forward time is above this many times its peers' median..."""
    min_gap_s: float = 0.05
    """... and above it by at least this many seconds (tiny, noisy forwards are not compared)."""
    min_samples: int = 5
    """Steps of timing a rank needs (from ``forward_s_recent``) before it is compared."""


def recent_forward(beat: dict) -> list[float]:
    values = beat.get("forward_s_recent")
    if not isinstance(values, list):
        return []
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v) and v >= 0]


def detect_stragglers(heartbeats: dict[int, dict], config: StragglerConfig = StragglerConfig()) -> list[Finding]:
    """One finding per slow TP group (a single rank when TP = 1), naming its slowest rank."""
    # stage -> TP group (dp_rank) -> [(rank, median forward s, beat, samples)]
    stages: dict[object, dict[int, list[tuple[int, float, dict, int]]]] = {}
    for rank, beat in sorted(heartbeats.items()):
        values = recent_forward(beat)
        if len(values) < config.min_samples:
            continue
        dp = beat.get("dp_rank")
        group = dp if isinstance(dp, int) and not isinstance(dp, bool) else rank
        stages.setdefault(beat.get("stage"), {}).setdefault(group, []).append(
            (rank, statistics.median(values), beat, len(values)))
    findings = []
    for stage, groups in stages.items():
        if len(groups) < 2:
            continue  # nobody to compare with (TP peers alone look alike)
        for group, members in sorted(groups.items()):
            peers = [m for g, ms in groups.items() if g != group for (_, m, _, _) in ms]
            peer_median = statistics.median(peers)
            rank, mine, beat, samples = max(members, key=lambda m: m[1])
            if mine <= config.factor * peer_median or mine - peer_median < config.min_gap_s:
                continue
            tp = beat.get("tp") if isinstance(beat.get("tp"), int) else 1
            where = f"pipeline stage {stage}" if stage is not None else "the run"
            tp_note = (f" (or its TP group: ranks {', '.join(str(r) for r, *_ in members)})"
                       if tp > 1 else "")
            ratio = mine / peer_median if peer_median > 0 else math.inf
            summary = (f"rank {rank} on {beat.get('host')} (pid {beat.get('pid')}) is a straggler{tp_note}: "
                       f"{mine:.3g} s of forward per step vs {peer_median:.3g} s, the median of {len(peers)} "
                       f"peer rank(s) in {where} ({ratio:.1f}x)")
            findings.append(Finding(
                "Straggler", "warning", summary, key=f"Straggler:{beat.get('host')}:rank{rank}", step=beat.get("step"),
                evidence={"rank": rank, "host": beat.get("host"), "pid": beat.get("pid"), "stage": stage,
                          "dp_rank": beat.get("dp_rank"), "tp": tp, "forward_s": mine, "peers_median_s": peer_median,
                          "ratio": ratio, "samples": samples, "tp_group": [r for r, *_ in members],
                          "peers": sorted(r for g, ms in groups.items() if g != group for r, *_ in ms)}))
    return findings
