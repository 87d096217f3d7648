"""Soak: keep injecting seeded faults into real tiny runs for H hours, then print the table.

``python -m tests.faults.soak --hours 0.25 [--seed S] [--workdir DIR]`` (off in CI). Each round is one run
under ``bigops launch --watch`` with a seeded shuffle of every fault kind; rounds repeat until the time is
up (the round in flight finishes). Every invariant of ``tests.faults.harness`` is checked after each round.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from bigops.goodput import facts as goodput_facts
from bigops.goodput import report as goodput_report
from bigops.goodput.account import PARTS
from tests.faults.harness import KINDS, Harness, format_table
from trainer.rundir import RunDir


def round_goodput(run: Path) -> goodput_report.Report | None:
    """``bigops goodput`` of one round's run (None when it trained no step)."""
    records = goodput_facts.read_records(RunDir(run))
    return goodput_report.build(str(run), records, goodput_facts.save_interval(RunDir(run))) if records.steps else None


def goodput_table(parts: dict[str, float], causes: dict[str, dict[str, float]]) -> list[str]:
    """The rounds' wall time by part (summed, largest first), the biggest loss, and the losses by incident kind."""
    wall = sum(parts.values())
    out = [f"goodput over the rounds: {parts.get('productive', 0.0) / wall:.1%} of {wall:.0f} s wall" if wall else
           "goodput over the rounds: -"]
    for part in sorted(PARTS, key=lambda p: -parts.get(p, 0.0)):
        out.append(f"  {goodput_report.LABELS[part]:<22} {parts.get(part, 0.0):>9.1f} s")
    losses = {p: v for p, v in parts.items() if p != "productive" and v > 0}
    if losses:
        worst = max(losses, key=losses.get)
        out.append(f"biggest loss: {goodput_report.LABELS[worst]} ({losses[worst]:.1f} s, {losses[worst] / wall:.1%})")
    for kind, spent in sorted(causes.items(), key=lambda kv: -sum(kv[1].values())):
        out.append(f"  {kind}: " + ", ".join(f"{k} {v:.1f} s" for k, v in spent.items() if v > 0))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated subset of " + ",".join(KINDS))
    parser.add_argument("--per-round", type=int, default=4, help="faults per run")
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bigops-soak-"))
    deadline = time.time() + args.hours * 3600
    rng = random.Random(args.seed)
    rows: dict[str, dict] = {}
    kept = wall = 0.0
    parts: dict[str, float] = {}
    causes: dict[str, dict[str, float]] = {}
    violations: list[str] = []
    round_no = 0
    while time.time() < deadline:
        round_no += 1
        pool = kinds[:]
        rng.shuffle(pool)
        chosen = pool[: args.per_round]
        # loss_spike needs the detector's warm-up: keep it last so the others come early
        chosen.sort(key=lambda k: k == "loss_spike")
        print(f"[soak] round {round_no}: {', '.join(chosen)}", flush=True)
        harness = Harness(workdir / f"round-{round_no}", chosen, seed=rng.randrange(1 << 30))
        report = harness.execute()
        problems = report.violations()
        violations += [f"round {round_no}: {p}" for p in problems]
        for row in report.rows():
            total = rows.setdefault(row["kind"], {"kind": row["kind"], "injected": 0, "recovered": 0,
                                                  "steps_lost": 0, "mttr": []})
            for key in ("injected", "recovered", "steps_lost"):
                total[key] += row[key]
            total["mttr"] += row["mttr"]
        ratio = report.effective_ratio() or 0.0
        round_wall = harness.finished_at - harness.started_at
        kept += ratio * round_wall
        wall += round_wall
        print(report.table(), flush=True)
        split = round_goodput(harness.run)
        if split is not None:
            print("\n".join(goodput_report.lines(split)), flush=True)
            for part, seconds in split.goodput.seconds.items():
                parts[part] = parts.get(part, 0.0) + seconds
            for charge in split.goodput.charges:
                spent = causes.setdefault(charge.kind, {})
                for part, seconds in charge.seconds.items():
                    spent[part] = spent.get(part, 0.0) + seconds
        print(f"[soak] round {round_no}: {'OK' if not problems else 'VIOLATIONS: ' + '; '.join(problems)}", flush=True)
    print(f"\nsoak: {round_no} runs, {args.hours:g} h asked, seed {args.seed}, {workdir}")
    print(format_table(sorted(rows.values(), key=lambda r: r["kind"]), kept / wall if wall else None, wall))
    print("\n".join(goodput_table(parts, causes)))
    print("invariants: " + ("all held" if not violations else f"{len(violations)} violations:\n  " +
                            "\n  ".join(violations)))
    return 0 if not violations else 1


if __name__ == "__main__":
    sys.exit(main())
