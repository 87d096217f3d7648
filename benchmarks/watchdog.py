"""Watchdog figures: detection latency (record written -> notification received) for a loss spike and a
hang, and the daemon's CPU use while watching. ``python -m benchmarks.watchdog``.

A real ``bigops watch`` process watches a run directory that this script writes into, and notifies a
local HTTP receiver; latencies are measured on this machine's clock from the write to the POST.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Receiver:
    def __init__(self):
        self.times: dict[str, float] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.times.setdefault(body["event"]["kind"], time.time())
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def _beat(run: Path, rank: int, step: int) -> None:
    path = run / "telemetry" / "heartbeat" / f"rank-{rank:05d}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"rank": rank, "host": "h", "pid": 1, "step": step, "phase": "step",
                               "time": time.time()}))
    os.replace(tmp, path)


def run(interval: float = 1.0, hang_timeout: float = 5.0, idle_seconds: float = 30.0) -> dict:
    receiver = _Receiver()
    root = Path(tempfile.mkdtemp(prefix="bigops-watch-bench-"))
    (root / "telemetry" / "heartbeat").mkdir(parents=True)
    (root / "run.toml").write_text(f'[alerts]\nwebhook_env = "BENCH_HOOK"\n[watchdog]\nhang_min_timeout_s = {hang_timeout}\n')
    metrics = root / "telemetry" / "metrics.jsonl"
    for step in range(1, 201):
        _append(metrics, {"step": step, "time": time.time(), "loss": 2.5 + 0.02 * (step % 3), "grad_norm": 1.0,
                          "tokens_per_second": 1000.0, "step_seconds": 0.1, "skipped": False})
    for rank in range(8):
        _beat(root, rank, 200)
    env = {**os.environ, "BENCH_HOOK": receiver.url}
    proc = subprocess.Popen([sys.executable, "-m", "bigops.cli.main", "watch", str(root), "--interval", str(interval)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2 * interval + 1)
        cpu_start = _cpu_seconds(proc.pid)
        idle_start = time.time()
        deadline = idle_start + idle_seconds
        step = 200
        while time.time() < deadline:  # a healthy run at 10 steps/s with 8 ranks' heartbeats
            step += 1
            _append(metrics, {"step": step, "time": time.time(), "loss": 2.5 + 0.02 * (step % 3), "grad_norm": 1.0,
                              "tokens_per_second": 1000.0, "step_seconds": 0.1, "skipped": False})
            for rank in range(8):
                _beat(root, rank, step)
            last_beat = time.time()  # the hang's clock starts at the last heartbeat written
            time.sleep(0.1)
        cpu = (_cpu_seconds(proc.pid) - cpu_start) / (time.time() - idle_start)
        for i in range(3):  # three high records confirm a spike
            step += 1
            _append(metrics, {"step": step, "time": time.time(), "loss": 9.0, "grad_norm": 1.0,
                              "tokens_per_second": 1000.0, "step_seconds": 0.1, "skipped": False})
        spike_written = time.time()
        end = time.time() + 120
        while ("LossSpike" not in receiver.times or "TrainingHang" not in receiver.times) and time.time() < end:
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait()
    hang_due = last_beat + hang_timeout  # watchdog.hang_min_timeout_s (steps are far shorter)
    return {
        "benchmark": "watchdog",
        "interval_s": interval,
        "spike_detection_latency_s": receiver.times.get("LossSpike", float("nan")) - spike_written,
        "hang_detection_latency_s": receiver.times.get("TrainingHang", float("nan")) - hang_due,
        "hang_timeout_s": hang_timeout,
        "daemon_cpu_fraction_of_one_core": cpu,
    }


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv=None) -> dict:
    result = run()
    print(f"watchdog (bigops watch --interval {result['interval_s']:g}, webhook on localhost):")
    print(f"  loss spike: confirming record written -> notification received: {result['spike_detection_latency_s']:.2f} s")
    print(f"  hang: timeout ({result['hang_timeout_s']:.0f} s after the last heartbeat) -> notification: "
          f"{result['hang_detection_latency_s']:.2f} s")
    print(f"  CPU while watching 8 ranks at 10 steps/s: {result['daemon_cpu_fraction_of_one_core']:.1%} of one core")
    return result


if __name__ == "__main__":
    main()
