"""How long the CLI takes to answer ``--help``, against a bare interpreter:
``python -m benchmarks.cli_startup [--repeat 10] [--json OUT]``.

Each command line runs as a fresh process (``python -m bigops.cli.main ...``, what the ``bigops`` script
does), ``--repeat`` times; the figure is the median wall time, and the baseline is ``python -c pass`` on the
same interpreter. The goal (issue 17) is under 0.5 s: no torch, DeepSpeed or transformers before a command
needs them (``tests/unit/test_cli.py`` checks the imports themselves; this measures what a person waits).
The last row, ``import torch``, is what every ``--help`` paid before.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 0.5
COMMANDS = {
    "python -c pass (baseline)": ["-c", "pass"],
    "bigops --help": ["-m", "bigops.cli.main", "--help"],
    "bigops ckpt --help": ["-m", "bigops.cli.main", "ckpt", "--help"],
    "bigops launch --help": ["-m", "bigops.cli.main", "launch", "--help"],
    "bigops ckpt export-hf --help": ["-m", "bigops.cli.main", "ckpt", "export-hf", "--help"],
    "python -c 'import torch' (before)": ["-c", "import torch"],
}


def wall_times(args: list[str], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run([sys.executable, *args], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return times


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10, help="runs of each command line (median reported)")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    rows = {}
    print(f"{'command':<36} {'median s':>9} {'min s':>7} {'vs baseline':>12}", flush=True)
    for name, command in COMMANDS.items():
        times = wall_times(command, args.repeat)
        rows[name] = {"median_s": statistics.median(times), "min_s": min(times)}
        base = rows["python -c pass (baseline)"]["median_s"]
        print(f"{name:<36} {rows[name]['median_s']:9.3f} {rows[name]['min_s']:7.3f} "
              f"{rows[name]['median_s'] - base:+11.3f}s", flush=True)
    help_s = rows["bigops --help"]["median_s"]
    print(f"bigops --help: {help_s:.3f} s ({'within' if help_s < GOAL_S else 'OVER'} the {GOAL_S} s goal)")
    result = {"benchmark": "cli_startup", "goal_s": GOAL_S, "help_s": help_s,
              "help_minus_baseline_s": help_s - rows["python -c pass (baseline)"]["median_s"], "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
