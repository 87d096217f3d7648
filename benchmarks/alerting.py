"""Alert latency, fault -> webhook: through Prometheus + Alertmanager (the generated rules and routes), and
the watchdog's direct notification beside it. ``python -m benchmarks.alerting``.

A real ``bigops watch --interval 1 --metrics-port`` exports a run directory that this script writes into
(healthy steps and heartbeats, GPU samples); a real Prometheus scrapes it and evaluates the rules, a real
Alertmanager routes to a local webhook. The fault is an XID 79 in one GPU sample (GpuXid: ``for: 0m``, so
the latency is the pipeline's own). Measured with the test's 1 s intervals and with the recommended ones.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bigops.dashboards import alerts, yamlout
from bigops.dashboards.generate import FAST, RECOMMENDED, Intervals, alertmanager_config, prometheus_config
from bigops.gpu.fake import FakeGpuBackend
from bigops.gpu.monitor import sample_once
from launcher.local import free_port
from tests.integration.services import WebhookReceiver, query, start_alertmanager, start_prometheus


def _healthy(root: Path, step: int) -> None:
    with open(root / "telemetry" / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps({"step": step, "time": time.time(), "loss": 2.5, "grad_norm": 1.0,
                                 "tokens_per_second": 1000.0, "step_seconds": 0.5, "skipped": False}) + "\n")
    beat = root / "telemetry" / "heartbeat" / "rank-00000.json"
    beat.with_suffix(".tmp").write_text(json.dumps({"rank": 0, "host": "h", "pid": 1, "step": step, "phase": "step",
                                                    "time": time.time()}))
    os.replace(beat.with_suffix(".tmp"), beat)


def run(intervals: Intervals) -> dict:
    root = Path(tempfile.mkdtemp(prefix="bigops-alert-bench-"))
    (root / "telemetry" / "heartbeat").mkdir(parents=True)
    (root / "run.toml").write_text('[alerts]\nwebhook_env = "BENCH_HOOK"\nmin_severity = "critical"\n')
    receiver, port = WebhookReceiver(), free_port()
    fake = FakeGpuBackend(8, host="bench-node")
    step = 1
    _healthy(root, step)
    sample_once(fake, root)
    watch = subprocess.Popen([sys.executable, "-m", "bigops.cli.main", "watch", str(root), "--interval", "1",
                              "--metrics-port", str(port)], env={**os.environ, "BENCH_HOOK": receiver.url + "/watchdog"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    services = []
    try:
        services.append(start_alertmanager(root / "am", alertmanager_config(receiver.url + "/pager",
                                                                            receiver.url + "/chat", intervals)))
        (root / "prom").mkdir()
        (root / "prom" / "rules.yml").write_text(yamlout.dump(alerts.rule_groups()))
        prometheus = start_prometheus(root / "prom", prometheus_config(
            [f"127.0.0.1:{port}"], [str(root / "prom" / "rules.yml")], [services[0].url.removeprefix("http://")],
            intervals))
        services.append(prometheus)
        deadline = time.time() + 120
        while not query(prometheus, "bigops_gpu_visible").get("data", {}).get("result") and time.time() < deadline:
            step += 1
            _healthy(root, step)
            sample_once(fake, root)
            time.sleep(1)
        fake.inject(5, xid_errors=[79])
        injected = time.time()
        sample_once(fake, root)
        paged = direct = None
        sampled = injected
        while (paged is None or direct is None) and time.time() < injected + 180:
            step += 1
            _healthy(root, step)
            if time.time() - sampled >= 10:  # `bigops gpu-monitor`'s default interval: the XID stays in the
                sampled = time.time()        # watchdog's 256-record window for 256 / 8 GPUs x 10 s
                sample_once(fake, root)
            time.sleep(0.5)
            paged = receiver.first(lambda path, body: path == "/pager" and any(
                a["labels"].get("alertname") == "GpuXid" for a in body.get("alerts", [])))
            direct = receiver.first(lambda path, body: path == "/watchdog" and body["event"]["kind"] == "GpuXid")
    finally:
        os.killpg(watch.pid, signal.SIGTERM)
        watch.wait()
        for service in services:
            service.stop()
        receiver.close()
    return {"scrape": intervals.scrape, "evaluation": intervals.evaluation, "group_wait": intervals.group_wait,
            "prometheus_alertmanager_s": (paged - injected) if paged else float("nan"),
            "watchdog_direct_s": (direct - injected) if direct else float("nan")}


def main(argv=None) -> dict:
    rows = [run(FAST), run(RECOMMENDED)] if not argv else [run(RECOMMENDED if argv[0] == "recommended" else FAST)]
    print("alerting (XID 79 in a GPU sample -> webhook; bigops watch --interval 1):")
    for r in rows:
        print(f"  scrape {r['scrape']}, eval {r['evaluation']}, group_wait {r['group_wait']}: Prometheus + "
              f"Alertmanager {r['prometheus_alertmanager_s']:.2f} s; watchdog direct {r['watchdog_direct_s']:.2f} s")
    return {"benchmark": "alerting", "runs": rows}


if __name__ == "__main__":
    main(sys.argv[1:])
