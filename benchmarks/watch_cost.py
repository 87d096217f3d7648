"""What the watchdog costs the run it watches: training tokens/s of the default tiny run with and without
``--watch``, alternated (the order swapped every round, so a drift of the machine's load falls on both), the
median of each, and their ratio (goal >= 0.97). ``python -m benchmarks.watch_cost [--rounds 3 --steps 60]
[--spares-now]`` (``--spares-now``: the supervisor's warm spares import during the measured steps, as they do
``watchdog.warm_spares_after_s`` after each launch's first step: the cost of that transient).

Each run is a fresh ``bigops launch RUN --steps N``; its figure is the median ``tokens_per_second`` of
``telemetry/metrics.jsonl`` past the first steps (warm-up). The corpus is tokenized once, by a warm-up run
that is not counted, and copied into every measured run (the trainer reuses a prepared ``RUN/data``).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.cli import main_of
from benchmarks.recovery_figures import ratio
from trainer.rundir import RunDir, read_jsonl


def steady_tokens_per_second(metrics: list[dict], warmup_steps: int) -> float | None:
    """The median tokens/s of the steps after the first ``warmup_steps`` (None: no such step)."""
    values = [r["tokens_per_second"] for r in metrics if r.get("step", 0) > warmup_steps
              and r.get("tokens_per_second") is not None]
    return statistics.median(values) if values else None


def order(rounds: int) -> list[bool]:
    """The runs' ``--watch`` flags: with, without; then without, with; ... (``rounds`` pairs)."""
    return [flag for i in range(rounds) for flag in ((True, False) if i % 2 == 0 else (False, True))]


def _launch(run_dir: Path, steps: int, watch: bool, sets: list[str], timeout_s: float) -> None:
    command = [sys.executable, "-m", "bigops.cli.main", "launch", str(run_dir), "--steps", str(steps),
               "--watch" if watch else "--no-watch",
               *[a for s in sets if watch or not s.startswith("watchdog.") for a in ("--set", s)]]
    with open(run_dir.parent / f"{run_dir.name}.log", "wb") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[2:5])} exited {done.returncode} (see {run_dir.name}.log)")


def run(rounds: int = 3, steps: int = 60, warmup_steps: int = 5, synthetic: bool = False,
        timeout: float = 900.0, spares_now: bool = False) -> dict:
    base = Path(tempfile.mkdtemp(prefix="bigops-watch-cost-"))
    sets = ["data.source=synthetic"] if synthetic else []
    if spares_now:  # the supervisor's spares warm during the measured steps (the transient after each restart)
        sets.append("watchdog.warm_spares_after_s=0")
    try:
        warm = base / "warm-up"
        _launch(warm, warmup_steps + 1, False, sets, timeout)
        runs = []
        for i, watch in enumerate(order(rounds)):
            run_dir = base / f"run-{i}-{'watch' if watch else 'nowatch'}"
            if (warm / "data").is_dir():
                shutil.copytree(warm / "data", run_dir / "data")
            _launch(run_dir, steps, watch, sets, timeout)
            tps = steady_tokens_per_second(read_jsonl(RunDir(run_dir).metrics), warmup_steps)
            runs.append({"watch": watch, "tokens_per_second": tps})
    finally:
        shutil.rmtree(base, ignore_errors=True)
    with_watch = statistics.median([r["tokens_per_second"] for r in runs if r["watch"]])
    without = statistics.median([r["tokens_per_second"] for r in runs if not r["watch"]])
    return {"benchmark": "watch_cost", "rounds": rounds, "steps": steps, "synthetic": synthetic, "runs": runs,
            "spares_now": spares_now,
            "tokens_per_second_watch": with_watch, "tokens_per_second_no_watch": without,
            "ratio_watch_vs_no_watch": ratio(with_watch, without)}


def report(r: dict) -> None:
    data = "synthetic data" if r["synthetic"] else "the default data"
    spares = "; the spares warming during them" if r.get("spares_now") else ""
    print(f"watchdog cost on the run (default tiny run, {data}, {r['rounds']} x 2 runs of {r['steps']} steps, "
          f"alternated{spares}):")
    for flag in (True, False):
        figures = ", ".join(f"{x['tokens_per_second']:,.0f}" for x in r["runs"] if x["watch"] is flag)
        median = r["tokens_per_second_watch" if flag else "tokens_per_second_no_watch"]
        print(f"  {'with --watch' if flag else 'without':<13} tokens/s {figures}  (median {median:,.0f})")
    print(f"  ratio with / without: {r['ratio_watch_vs_no_watch']:.3f} (goal >= 0.97)")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.watch_cost",
                                     description="Training tokens/s with and without the watchdog, alternated.")
    parser.add_argument("--rounds", type=int, default=3, help="pairs of runs (with and without --watch)")
    parser.add_argument("--steps", type=int, default=60, help="steps per run")
    parser.add_argument("--warmup-steps", type=int, default=5, help="first steps of each run left out")
    parser.add_argument("--synthetic", action="store_true", help="synthetic data instead of the default corpus")
    parser.add_argument("--spares-now", action="store_true",
                        help="warm the supervisor's spares during the measured steps (watchdog.warm_spares_after_s=0)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one run may take")
    return main_of(parser, run, report, argv)


if __name__ == "__main__":
    main()
