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

from tests.faults.harness import KINDS, Harness, format_table


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
        print(f"[soak] round {round_no}: {'OK' if not problems else 'VIOLATIONS: ' + '; '.join(problems)}", flush=True)
    print(f"\nsoak: {round_no} runs, {args.hours:g} h asked, seed {args.seed}, {workdir}")
    print(format_table(sorted(rows.values(), key=lambda r: r["kind"]), kept / wall if wall else None, wall))
    print("invariants: " + ("all held" if not violations else f"{len(violations)} violations:\n  " +
                            "\n  ".join(violations)))
    return 0 if not violations else 1


if __name__ == "__main__":
    sys.exit(main())
