"""Run every benchmark, print a table, write JSON: ``python -m benchmarks [--out results.json]``."""

import argparse
import json
import platform
import time

from benchmarks import alerting, cli_startup, data_prepare, detection, incidents, model_throughput, parallel_overhead, recovery, \
    rank_exit, reshape, resume_check, surgery, watch_cost, watchdog, watchdog_scale

BENCHMARKS = {"model_throughput": model_throughput.main, "watchdog": watchdog.main, "recovery": recovery.main,
              "surgery": surgery.main, "parallel_overhead": parallel_overhead.main,
              "watchdog_scale": watchdog_scale.main, "alerting": alerting.main, "detection": detection.main,
              "incidents": incidents.main, "reshape": reshape.main, "cli_startup": cli_startup.main,
              "data_prepare": data_prepare.main, "resume_check": resume_check.main, "watch_cost": watch_cost.main,
              "rank_exit": rank_exit.main}


def _get(result: dict, *path):
    for key in path:
        if not isinstance(result, dict) or result.get(key) is None:
            return None
        result = result[key]
    return result


# One row per benchmark in the closing table: what is compared, and the ratio (ours / baseline, or the
# headline figure where the baseline is the reference).
HEADLINES = {
    "model_throughput": ("tokens/s, ours / transformers", lambda r: _get(r, "ratio_ours_vs_transformers")),
    "watchdog": ("spike -> notification, s (direct)", lambda r: _get(r, "spike_detection_latency_s")),
    "recovery": ("MTTR bigops / NVRx (s if NVRx failed; goal <= .5)",
                 lambda r: _get(r, "ratio_mttr_bigops_vs_nvrx") or _get(r, "bigops", "mttr_s")),
    "surgery": ("surgery GB/s / (cp -r + sync)", lambda r: _get(r, "ratio_surgery_vs_cp_then_sync")),
    "reshape": ("reshape GB/s / (cp -r + sync)", lambda r: _get(r, "ratio_reshape_vs_cp_then_sync")),
    "data_prepare": ("data prepare tokens/s / tokenizers' batch", lambda r: _get(r, "ratio_ours_vs_tokenizers")),
    "parallel_overhead": ("PP2 step time / one rank", lambda r: _get(r, "ratio_vs_single_rank", "PP2")),
    "watchdog_scale": ("pass CPU / parse-only baseline", lambda r: _get(r, "ratio_pass_vs_parse_baseline")),
    "alerting": ("Prometheus+AM / watchdog direct latency", lambda r: _alerting_ratio(r)),
    "detection": ("rollbacks not needed (bigops, 20 recovering)", lambda r: _get(r, "unneeded_rollbacks_bigops")),
    "incidents": ("pages per incident, 90 sim. days (goal 1.0)", lambda r: _get(r, "pages_per_incident")),
    "watch_cost": ("tokens/s with --watch / without (goal >= 0.97)", lambda r: _get(r, "ratio_watch_vs_no_watch")),
    "cli_startup": ("bigops --help wall s (goal < 0.5)", lambda r: _get(r, "help_s")),
    "resume_check": ("restart ckpt check, before / after (stamped, largest)",
                     lambda r: (r.get("rows") or [{}])[-1].get("ratio_before_vs_after_stamped")),
}


def _alerting_ratio(result: dict):
    rows = result.get("runs") or []
    if not rows:
        return None
    row = rows[0]
    direct, prom = row.get("watchdog_direct_s"), row.get("prometheus_alertmanager_s")
    return prom / direct if direct and prom and direct == direct and prom == prom else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=None, help="write all results as JSON here")
    parser.add_argument("--only", nargs="*", default=None, choices=sorted(BENCHMARKS), help="run these only")
    args = parser.parse_args()
    names = args.only or list(BENCHMARKS)
    results = {"machine": platform.platform(), "processor": platform.processor(), "time": time.time(),
               "benchmarks": []}
    for name in names:
        print(f"\n== {name}", flush=True)
        try:
            results["benchmarks"].append(BENCHMARKS[name]([]))
        except Exception as exc:  # one failing benchmark must not hide the others' figures
            print(f"   failed: {type(exc).__name__}: {exc}")
            results["benchmarks"].append({"benchmark": name, "failed": f"{type(exc).__name__}: {exc}"})
    print(f"\n{'benchmark':<20} {'compared':<44} {'figure':>8}")
    for name, result in zip(names, results["benchmarks"]):
        what, headline = HEADLINES.get(name, ("", lambda r: None))
        value = None if result.get("failed") else headline(result)
        print(f"{name:<20} {what:<44} {'failed' if result.get('failed') else f'{value:8.2f}' if value is not None else '     n/a'}")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
