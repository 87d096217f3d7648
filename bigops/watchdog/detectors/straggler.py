"""Stragglers: a rank whose own compute (its module's forward calls per training step, ``forward_s`` in its
heartbeat) is well above that of the same pipeline stage in the other data-parallel replicas.

Waits for other ranks happen outside the forward (pipeline p2p, the gradient all-reduce), so a slow GPU,
a throttled node or a noisy neighbour shows up as a larger ``forward_s`` on that rank only. Inside a TP
group the all-reduces inside the forward make the TP peers look alike: the unit compared is the TP group
(ranks of one stage and one ``dp_rank``), the slowest rank in it is named, "(or its TP group)" when TP > 1.
Two rules: a rank far above its peers (``factor``, 1.5x), and — what a big run needs, where one slow GPU
costs 5 % of 384 — a rank a few percent above peers that are tight (``min_excess`` and ``z`` x the noise:
the spread of the peers' medians and of each rank's own samples). A node with several slow ranks is named.
A warning: the run goes on at the straggler's pace.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from bigops.watchdog.detectors.robust import MAD_TO_SIGMA
from bigops.watchdog.findings import Finding
from trainer.config import WatchdogConfig


@dataclass(frozen=True)
class StragglerConfig:
    factor: float = WatchdogConfig.straggler_factor
    """A rank whose median forward time per step is above this many times its peers' median is slow...
    (``watchdog.straggler_factor``)"""
    min_gap_s: float = WatchdogConfig.straggler_min_gap_s
    """... and any slow rank is above its peers by at least this many seconds (tiny forwards: not compared;
    ``watchdog.straggler_min_gap_s``)."""
    min_samples: int = WatchdogConfig.straggler_min_samples
    """Steps of timing a rank needs (from ``forward_s_recent``) before it is compared
    (``watchdog.straggler_min_samples``)."""
    min_excess: float = 0.03
    """Relative to the noise: a rank is also slow when it is more than this fraction above its peers..."""
    z: float = 5.0
    """... and more than ``z`` noise sigmas (the spread of its peers and of its own samples) above them."""
    persist_passes: int = 3
    """A rank slow only by the relative rule is reported after this many passes in a row (and resolved
    after as many passes in a row not slow)."""


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def recent_forward(beat: dict) -> list[float]:
    values = beat.get("forward_s_recent")
    if not isinstance(values, list):
        return []
    return [float(v) for v in values if _number(v) is not None and v >= 0]


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _spread(logs: list[float]) -> float:
    """1.4826 x MAD: a robust sigma (0 for fewer than 2 values)."""
    if len(logs) < 2:
        return 0.0
    middle = statistics.median(logs)
    return MAD_TO_SIGMA * statistics.median(abs(v - middle) for v in logs)


def slow_groups(heartbeats: dict[int, dict], config: StragglerConfig) -> list[dict]:
    """This pass's slow TP groups, each {"key", "rule" (ratio|noise), "finding"}: pure."""
    # stage -> TP group (dp_rank) -> [(rank, median forward s, beat, samples)]
    stages: dict[object, dict[int, list[tuple[int, float, dict, list[float]]]]] = {}
    for rank, beat in sorted(heartbeats.items()):
        if not isinstance(beat, dict):
            continue
        values = [v for v in recent_forward(beat) if v > 0]
        if len(values) < config.min_samples:
            continue
        dp = _int(beat.get("dp_rank"))
        stage = beat.get("stage") if _int(beat.get("stage")) is not None else None
        stages.setdefault(stage, {}).setdefault(dp if dp is not None else rank, []).append(
            (rank, statistics.median(values), beat, values))
    out = []
    for stage, groups in stages.items():
        if len(groups) < 2:
            continue  # nobody to compare with (TP peers alone look alike)
        for group, members in sorted(groups.items()):
            peers = [m for g, ms in groups.items() if g != group for (_, m, _, _) in ms]
            peer_median = statistics.median(peers)
            rank, mine, beat, values = max(members, key=lambda m: m[1])
            if peer_median <= 0 or mine - peer_median < config.min_gap_s:
                continue
            excess = math.log(mine / peer_median)
            # the noise: how much the peers' medians scatter, and how uncertain each median is from its samples
            own = [_spread([math.log(v) for v in vs]) * 1.25 / math.sqrt(len(vs))
                   for ms in groups.values() for (_, _, _, vs) in ms]
            noise = max(_spread([math.log(p) for p in peers]), statistics.median(own))
            by_ratio = mine > config.factor * peer_median
            by_noise = excess > max(math.log1p(config.min_excess), config.z * noise)
            if not (by_ratio or by_noise):
                continue
            tp = _int(beat.get("tp")) or 1
            host = beat.get("host") if isinstance(beat.get("host"), str) else "?"
            where = f"pipeline stage {stage}" if stage is not None else "the run"
            tp_note = (f" (or its TP group: ranks {', '.join(str(r) for r, *_ in members)})" if tp > 1 else "")
            ratio = mine / peer_median
            summary = (f"rank {rank} on {host} (pid {beat.get('pid')}) is a straggler{tp_note}: {mine:.3g} s of "
                       f"forward per step vs {peer_median:.3g} s, the median of {len(peers)} peer rank(s) in {where} "
                       f"({ratio:.2f}x; noise {noise:.1%})")
            key = f"Straggler:{host}:rank{rank}"
            out.append({"key": key, "rule": "ratio" if by_ratio else "noise", "host": host, "finding": Finding(
                "Straggler", "warning", summary, key=key, step=_int(beat.get("step")),
                evidence={"rank": rank, "host": host, "pid": beat.get("pid"), "stage": stage,
                          "dp_rank": beat.get("dp_rank"), "tp": tp, "forward_s": mine, "peers_median_s": peer_median,
                          "ratio": ratio, "noise": noise, "samples": len(values),
                          "tp_group": [r for r, *_ in members],
                          "peers": sorted(r for g, ms in groups.items() if g != group for r, *_ in ms)})})
    return _per_node(out)


def _per_node(slow: list[dict]) -> list[dict]:
    """Several slow ranks on one host point at the node (cooling, a PCIe switch, a noisy neighbour): say so."""
    hosts: dict[str, list[int]] = {}
    for s in slow:
        hosts.setdefault(s["host"], []).append(s["finding"].evidence["rank"])
    for s in slow:
        ranks = hosts[s["host"]]
        if len(ranks) > 1:
            f = s["finding"]
            s["finding"] = Finding(f.kind, f.severity, f"{f.summary}; node {s['host']} has {len(ranks)} slow ranks "
                                   f"({', '.join(map(str, sorted(ranks)))}): look at the node", key=f.key, step=f.step,
                                   evidence={**f.evidence, "node_slow_ranks": sorted(ranks)})
    return slow


class StragglerDetector:
    """Stragglers over the run's life: a rank slow by the relative rule only is reported after
    ``persist_passes`` passes in a row (one noisy pass is not a straggler), by the ratio rule at once; each is
    one problem (key ``Straggler:<host>:rank<rank>``) until it has not been slow for ``persist_passes``
    passes (then resolved once). The state is plain JSON."""

    def __init__(self, config: StragglerConfig = StragglerConfig()):
        self.config = config
        self.streak: dict[str, int] = {}
        self.open: dict[str, Finding] = {}
        self.clear: dict[str, int] = {}
        self.resolved: list[Finding] = []

    def update(self, heartbeats: dict[int, dict], now: float | None = None) -> None:
        slow = {s["key"]: s for s in slow_groups(heartbeats if isinstance(heartbeats, dict) else {}, self.config)}
        need = max(1, self.config.persist_passes)
        for key, s in slow.items():
            self.streak[key] = self.streak.get(key, 0) + 1
            self.clear.pop(key, None)
            if key in self.open or s["rule"] == "ratio" or self.streak[key] >= need:
                self.open[key] = s["finding"]
        for key in list(self.streak):
            if key not in slow:
                del self.streak[key]
        for key in list(self.open):
            if key in slow:
                continue
            self.clear[key] = self.clear.get(key, 0) + 1
            if self.clear[key] >= need:
                f = self.open.pop(key)
                del self.clear[key]
                self.resolved.append(Finding("Straggler", "info", f"rank {f.evidence['rank']} on "
                                             f"{f.evidence['host']} keeps up with its peers again", key=key,
                                             step=f.step, resolved=True, evidence={"rank": f.evidence["rank"]}))

    def current(self) -> list[Finding]:
        out, self.resolved = self.resolved, []
        return out + list(self.open.values())

    def to_json(self) -> dict:
        return {"streak": self.streak, "clear": self.clear, "open": {k: f.as_dict() for k, f in self.open.items()}}

    @classmethod
    def from_json(cls, data: dict, config: StragglerConfig = StragglerConfig()) -> "StragglerDetector":
        d = cls(config)
        if not isinstance(data, dict):
            return d
        ints = lambda m: {k: v for k, v in m.items() if isinstance(k, str) and _int(v) is not None}             if isinstance(m, dict) else {}  # noqa: E731
        d.streak, d.clear = ints(data.get("streak")), ints(data.get("clear"))
        for key, f in (data.get("open") or {}).items() if isinstance(data.get("open"), dict) else []:
            try:
                d.open[key] = Finding(**f)
            except (TypeError, ValueError):
                continue
        return d


def detect_stragglers(heartbeats: dict[int, dict], config: StragglerConfig = StragglerConfig()) -> list[Finding]:
    """One pass on its own (no history): slow TP groups by either rule, at once."""
    return [s["finding"] for s in slow_groups(heartbeats, config)]
