"""Run every benchmark, print a table, write JSON: ``python -m benchmarks [--out results.json]``."""

import argparse
import json
import platform
import time

from benchmarks import alerting, model_throughput, parallel_overhead, recovery, surgery, watchdog, watchdog_scale

BENCHMARKS = {"model_throughput": model_throughput.main, "watchdog": watchdog.main, "recovery": recovery.main,
              "surgery": surgery.main, "parallel_overhead": parallel_overhead.main,
              "watchdog_scale": watchdog_scale.main, "alerting": alerting.main}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=None, help="write all results as JSON here")
    args = parser.parse_args()
    results = {"machine": platform.platform(), "processor": platform.processor(), "time": time.time(),
               "benchmarks": [fn([]) for fn in BENCHMARKS.values()]}
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
