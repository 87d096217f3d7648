"""Pages per incident and the longest silent recurrence over a simulated long run, for bigops and for the
old keys: ``python -m benchmarks.incidents [--days 90] [--seed 0] [--pass-s 300] [--json OUT]``.

The run is ``tests.sim.harness`` (see its docstring for what is real and what stands in): the real
watchdog pass, incident layer, supervisor decisions and journaled executor over a run directory written by
stand-in ranks, on a simulated clock, with seeded faults at Llama 3's interruption rate (466 in 54 days)
and every kind recurring. Goal: 1.0 page per incident, longest silent recurrence 0. The baseline runs the
same findings through the keys of d84921f (a step or a window start in them) and its ``WatchState.is_new``
(a key reported once is never reported again unless its severity rises).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from tests.sim.harness import LLAMA3_PER_DAY, Sim, SimConfig


def scratch_dir() -> Path:
    """A tmpfs folder when there is one (the run directory sees a few hundred thousand small writes)."""
    shm = Path("/dev/shm")
    return Path(tempfile.mkdtemp(prefix="bigops-sim-", dir=shm if shm.is_dir() else None))


def run(days: float, seed: int, pass_s: float, keep: bool = False) -> tuple[dict, str, list[str]]:
    root = scratch_dir()
    try:
        started = time.time()
        report = Sim(root, SimConfig(days=days, seed=seed, pass_s=pass_s)).run_all()
        figures = report.figures()
        figures["wall_s"] = time.time() - started
        return figures, report.table(), report.violations()
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=90.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pass-s", type=float, default=300.0, help="simulated seconds between watchdog passes")
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the simulated run directory")
    args = parser.parse_args(argv)
    print(f"{args.days:g} simulated days at {LLAMA3_PER_DAY:.1f} faults/day (Llama 3), seed {args.seed}, a watchdog "
          f"pass every {args.pass_s:g} simulated s", flush=True)
    figures, table, violations = run(args.days, args.seed, args.pass_s, args.keep)
    print(table)
    print(f"invariants: {'all held' if not violations else f'{len(violations)} violated:'}")
    for line in violations[:50]:
        print(f"  {line}")
    result = {"benchmark": "incidents", **figures, "violations": violations}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
