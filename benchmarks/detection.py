"""Detection quality: precision, recall, delay and rollbacks that were not needed — bigops' detectors
beside the rules people use instead, on the same series in the same run.

- Loss spikes, on the shared real curves (tests/fixtures/loss-curves: BigScience's spikes, a clean 20k-step
  1.5B run with >100 one-step outliers) and on synthetic runs with planted spikes, some that recover by
  themselves within ~30 steps (a rollback there is lost work: 20 iterations redone on 384 GPUs and 839 M
  tokens skipped for nothing, in BLOOM's case) and some that persist (a rollback is the remedy). A rollback
  is what the rule's alarm triggers: bigops' critical ``LossSpike`` (confirmed after ``spike_patience``
  steps or on getting worse; its first flag, the suspected warning, is shown as its own row, and the real
  BigScience excerpts end before 50 steps have passed, so there only the flag can be seen); Megatron's rule (a loss above 10x the
  max of the first 100 losses); a 1.5x running-median rule (a loss above 1.5x the median of the last 100).
- Slowdowns of 2-50 % at 0.4 % and 3 % step-time noise, and a noisy box (20 %): bigops' change detection
  vs the fixed 0.7x ratio rule (median of the last 20 / median of the 200 before).
- Stragglers (one rank 3-50 % slower) among tight (0.4 %) and noisy (10 %) peers: bigops vs the 1.5x rule.

No peer publishes these figures. Seeded and deterministic: ``python -m benchmarks.detection [--seed N]``.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import statistics
from collections import deque
from pathlib import Path

CURVES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "loss-curves"
PERSISTENT, RECOVERING = "persistent", "recovering"


# ------------------------------------------------------------------------------------------ the rules
def _bigops_alarms(series: list[tuple[int, float]], excerpt: bool, severities: tuple[str, ...]) -> list[int]:
    from bigops.watchdog.detectors.loss_spike import LossSpikeConfig, LossSpikeDetector
    config = LossSpikeConfig(warmup_records=0, min_history=2) if excerpt else LossSpikeConfig()
    detector = LossSpikeDetector(config)
    alarms, keys = [], set()
    for step, loss in series:
        for f in [*detector.update(step, loss), *detector.current()]:
            if f.kind == "LossSpike" and f.severity in severities and not f.resolved and f.key not in keys:
                keys.add(f.key)
                alarms.append(step)
    return alarms


def bigops_loss_rule(series: list[tuple[int, float]], excerpt: bool = False) -> list[int]:
    """Steps at which bigops rolls back: each confirmed (critical) ``LossSpike``, once per episode key — a
    spike not recovered ``watchdog.spike_patience`` (50) steps after it started, or worse first.
    ``excerpt``: a few rows of a real log (BigScience's chronicles): no warm-up, as in the unit tests."""
    return _bigops_alarms(series, excerpt, ("critical",))


def bigops_flag_rule(series: list[tuple[int, float]], excerpt: bool = False) -> list[int]:
    """Steps at which bigops first flags a spike (suspected: a warning page, nothing rolled back yet)."""
    return _bigops_alarms(series, excerpt, ("warning", "critical"))


def megatron_rule(series: list[tuple[int, float]], excerpt: bool = False) -> list[int]:
    """Megatron-LM's large-loss check: a loss above 10x the max of the first 100 losses (of the excerpt)."""
    head = min(100, max(1, len(series) // 4)) if excerpt else 100
    first = [loss for _, loss in series[:head] if math.isfinite(loss)]
    if not first:
        return []
    bar = 10 * max(first)
    return _episodes([(s, loss > bar) for s, loss in series[head:]])


def running_median_rule(series: list[tuple[int, float]], excerpt: bool = False, factor: float = 1.5,
                        window: int = 100) -> list[int]:
    """A loss above ``factor`` x the median of the last ``window`` losses (the high ones not counted)."""
    recent: deque[float] = deque(maxlen=window)
    marks = []
    for step, loss in series:
        high = len(recent) >= (2 if excerpt else 10) and loss > factor * statistics.median(recent)
        marks.append((step, high))
        if not high and math.isfinite(loss):
            recent.append(loss)
    return _episodes(marks)


def _episodes(marks: list[tuple[int, bool]], rearm: int = 5) -> list[int]:
    """The first step of each run of alarms (re-armed after ``rearm`` quiet records)."""
    out, quiet, armed = [], rearm, True
    for step, high in marks:
        if high and armed:
            out.append(step)
            armed, quiet = False, 0
        elif not high:
            quiet += 1
            armed = armed or quiet >= rearm
    return out


LOSS_RULES = {"bigops": bigops_loss_rule, "bigops flag (no rollback)": bigops_flag_rule, "megatron 10x first-100 max": megatron_rule,
              "1.5x running median": running_median_rule}


# ----------------------------------------------------------------------------------------- the series
def synthetic_loss(rng: random.Random, steps: int = 3000) -> list[float]:
    """A falling loss with relative noise and the one-step outliers real data gives (bad batches)."""
    out = []
    for t in range(steps):
        level = 2.2 + 6.0 * (t + 200) ** -0.35
        loss = level * (1 + rng.gauss(0, 0.01))
        if rng.random() < 0.004:
            loss += rng.uniform(0.8, 2.5)  # a blip: one step
        out.append(loss)
    return out


def planted(rng: random.Random, kind: str, steps: int = 3000) -> tuple[list[tuple[int, float]], int]:
    base = synthetic_loss(rng, steps)
    start = rng.randrange(800, steps - 800)
    height = rng.uniform(1.0, 4.0)
    tau = rng.uniform(4.0, 9.0)  # a recovering spike is back to normal within ~30 steps
    series = []
    for t, loss in enumerate(base):
        if t >= start:
            if kind == PERSISTENT:
                loss += height * (1.0 if t - start < 400 else math.exp(-(t - start - 400) / 200))
            else:
                loss += height * math.exp(-(t - start) / tau)
        series.append((t, loss))
    return series, start


def real_curves() -> list[tuple[str, list[tuple[int, float]], list[tuple[int, str]]]]:
    """(name, series, [(event step, persistent|recovering)]) for the shared curves, as their README says."""
    def load(name):
        with open(CURVES / name) as handle:
            return list(csv.DictReader(handle))
    out = []
    clean = [(int(r["step"]), float(r["loss"])) for r in load("modded_nanogpt_scaleup1b_ad8d7ae5.csv") if r["loss"]]
    out.append(("modded-nanogpt 1.5B clean 20k steps", clean, []))
    tr1 = [(int(r["step"]), float(r["loss"])) for r in load("bigscience_tr1_13b_excerpts.csv") if r["loss"]]
    out.append(("BigScience tr1-13B (loss x2.6 at 29050, ~500 it. to recover)", tr1, [(29050, PERSISTENT)]))
    tr8b = [(int(r["step"]), float(r["loss"])) for r in load("bigscience_tr8b_104b_excerpts.csv") if r["loss"]]
    out.append(("BigScience tr8b-104B (2.67 -> 4.37 at 17062, stays)", tr8b, [(17062, PERSISTENT)]))
    return out


# -------------------------------------------------------------------------------------------- scoring
def score(alarms: list[int], events: list[tuple[int, str]], window: int = 200) -> dict:
    """Event-level: a persistent event is caught by an alarm in [start, start + window]; every other alarm
    (on a recovering event, or on nothing: a false alarm) is a rollback that was not needed."""
    caught, delays, unneeded, matched = 0, [], 0, set()
    for start, kind in events:
        hits = [a for a in alarms if start <= a <= start + window]
        matched |= set(hits)
        if kind == PERSISTENT and hits:
            caught += 1
            delays.append(hits[0] - start)
        elif kind == RECOVERING and hits:
            unneeded += 1
    false = [a for a in alarms if a not in matched]
    persistent = sum(1 for _, k in events if k == PERSISTENT)
    true_alarms = sum(1 for a in alarms if a in matched and any(
        k == PERSISTENT and s <= a <= s + window for s, k in events))
    return {"persistent": persistent, "caught": caught, "alarms": len(alarms), "true_alarms": true_alarms,
            "unneeded_rollbacks": len(alarms) - true_alarms, "recovering_rolled_back": unneeded,
            "false_alarms": len(false), "delays": delays}


def summarise(total: dict) -> dict:
    recall = total["caught"] / total["persistent"] if total["persistent"] else None
    precision = total["true_alarms"] / total["alarms"] if total["alarms"] else None
    delay = statistics.median(total["delays"]) if total["delays"] else None
    return {"precision": precision, "recall": recall, "median_delay_steps": delay,
            "unneeded_rollbacks": total["unneeded_rollbacks"], "alarms": total["alarms"]}


def add(into: dict, part: dict) -> None:
    for key, value in part.items():
        into[key] = into.get(key, [] if isinstance(value, list) else 0) + value


def loss_figures(seed: int, runs: int) -> dict:
    rng = random.Random(seed)
    synthetic = [(f"synthetic {kind} #{i}", *planted(rng, kind)) for kind in (PERSISTENT, RECOVERING)
                 for i in range(runs)]
    results: dict = {}
    for rule, fn in LOSS_RULES.items():
        totals = {"synthetic persistent": {}, "synthetic recovering": {}, "real curves": {}}
        per_curve = {}
        for name, series, start in synthetic:
            kind = PERSISTENT if "persistent" in name else RECOVERING
            add(totals[f"synthetic {kind}"], score(fn(series), [(start, kind)]))
        for name, series, events in real_curves():
            part = score(fn(series, excerpt="BigScience" in name), events)
            add(totals["real curves"], part)
            per_curve[name] = part
        results[rule] = {group: summarise(t) for group, t in totals.items()}
        results[rule]["curves"] = {n: {"alarms": p["alarms"], "caught": p["caught"], "false_alarms": p["false_alarms"]}
                                   for n, p in per_curve.items()}
    return results


# ------------------------------------------------------------------------------------------ slowdowns
def ratio_rule(values: list[float], recent: int = 20, baseline: int = 200, ratio: float = 0.7) -> int | None:
    for i in range(recent + 50, len(values)):
        now = statistics.median(values[i - recent:i])
        before = statistics.median(values[max(0, i - recent - baseline):i - recent])
        if before > 0 and now / before < ratio:
            return i
    return None


def bigops_throughput(values: list[float]) -> int | None:
    from bigops.watchdog.detectors.throughput import ThroughputDetector
    d = ThroughputDetector()
    for i, v in enumerate(values):
        d.update(i, v)
        if any(not f.resolved for f in d.current()):
            return i
    return None


def slowdown_figures(seed: int) -> list[dict]:
    rows = []
    for noise in (0.004, 0.03, 0.2):
        for drop in (0.0, 0.02, 0.05, 0.1, 0.2, 0.5):
            rng = random.Random(seed + int(noise * 1000) + int(drop * 100))
            values = [1e4 * (1 + rng.gauss(0, noise)) for _ in range(800)]
            values += [1e4 * (1 - drop) * (1 + rng.gauss(0, noise)) for _ in range(600)]
            values = [v / 3 if i % 97 == 0 else v for i, v in enumerate(values)]  # checkpoint steps
            row = {"noise": noise, "drop": drop}
            for name, fn in (("bigops", bigops_throughput), ("ratio 0.7x", ratio_rule)):
                at = fn(values)
                row[name] = None if at is None else at - 800
            rows.append(row)
    return rows


def straggler_figures(seed: int) -> list[dict]:
    from bigops.watchdog.detectors.straggler import StragglerConfig, StragglerDetector, detect_stragglers
    rows = []
    for noise in (0.004, 0.1):
        for slow in (0.0, 0.03, 0.05, 0.1, 0.5):
            rng = random.Random(seed + int(noise * 1000) + int(slow * 100))
            d = StragglerDetector()
            found = {"bigops": None, "1.5x rule": None}
            for p in range(20):
                beats = {r: {"rank": r, "host": f"n{r // 4}", "pid": r, "stage": 0, "dp_rank": r, "tp": 1,
                             "forward_s_recent": [2.0 * (1 + (slow if r == 5 else 0)) * (1 + rng.gauss(0, noise))
                                                  for _ in range(16)]} for r in range(16)}
                d.update(beats)
                if found["bigops"] is None and any(f.evidence.get("rank") == 5 for f in d.current()
                                                   if not f.resolved):
                    found["bigops"] = p + 1
                old = detect_stragglers(beats, StragglerConfig(min_excess=10.0))  # the ratio rule alone
                if found["1.5x rule"] is None and any(f.evidence.get("rank") == 5 for f in old):
                    found["1.5x rule"] = p + 1
            rows.append({"noise": noise, "slow": slow, **found})
    return rows


# ---------------------------------------------------------------------------------------------- main
def _fmt(value, digits=2) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=20, help="synthetic runs per spike kind")
    args = parser.parse_args(argv)
    loss = loss_figures(args.seed, args.runs)
    print(f"loss spikes ({args.runs} synthetic runs per kind + the shared real curves); a rollback = the rule's alarm")
    print(f"{'rule':<28} {'series':<22} {'precision':>9} {'recall':>7} {'delay':>6} {'unneeded rollbacks':>19}")
    for rule, groups in loss.items():
        for group in ("synthetic persistent", "synthetic recovering", "real curves"):
            g = groups[group]
            print(f"{rule:<28} {group:<22} {_fmt(g['precision']):>9} {_fmt(g['recall']):>7} "
                  f"{_fmt(g['median_delay_steps'], 0):>6} {g['unneeded_rollbacks']:>19}")
    for rule, groups in loss.items():
        for name, part in groups["curves"].items():
            print(f"   {rule:<26} {name:<62} alarms {part['alarms']}, caught {part['caught']}, "
                  f"false {part['false_alarms']}")
    slow = slowdown_figures(args.seed)
    print("\nslowdowns: steps from the drop to the first warning (- = never; drop 0 = a false alarm)")
    print(f"{'noise':>6} {'drop':>5} {'bigops':>7} {'ratio 0.7x':>11}")
    for row in slow:
        print(f"{row['noise']:>6.1%} {row['drop']:>5.0%} {_fmt(row['bigops']):>7} {_fmt(row['ratio 0.7x']):>11}")
    strag = straggler_figures(args.seed)
    print("\nstragglers (16 ranks, rank 5 slower): passes to the first finding (- = never; 0 % = a false alarm)")
    print(f"{'noise':>6} {'slower':>7} {'bigops':>7} {'1.5x rule':>10}")
    for row in strag:
        print(f"{row['noise']:>6.1%} {row['slow']:>7.0%} {_fmt(row['bigops']):>7} {_fmt(row['1.5x rule']):>10}")
    b, m = loss["bigops"], loss["megatron 10x first-100 max"]
    return {"benchmark": "detection", "loss": loss, "slowdowns": slow, "stragglers": strag,
            "unneeded_rollbacks_bigops": b["synthetic recovering"]["unneeded_rollbacks"] + b["real curves"]["unneeded_rollbacks"],
            "recall_persistent_bigops": b["synthetic persistent"]["recall"],
            "recall_persistent_megatron": m["synthetic persistent"]["recall"]}


if __name__ == "__main__":
    main()
