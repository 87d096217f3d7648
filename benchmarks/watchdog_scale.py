"""Watchdog scale: one pass (``bigops.watchdog.daemon.tick``) over a BLOOM-176B-sized run directory —
384 ranks' heartbeats, 48 nodes x 8 GPUs of NVML samples, a metrics history — with new records arriving
at 1 step/s between passes. Reports the pass's CPU time, the records it ingests per CPU second, its CPU
share at the default 5 s interval, and, as the same-run baseline, the cost of merely reading and parsing
the files the pass reads (``json.loads`` of every line / file). ``python -m benchmarks.watchdog_scale``.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bigops.watchdog.daemon import tick
from bigops.watchdog.scan import WatchConfig
from bigops.watchdog.state import WatchState
from benchmarks.cli import main_of
from trainer.rundir import RunDir


def _metric(step: int, now: float, rng: random.Random) -> dict:
    return {"step": step, "time": now, "loss": 2.5 + 0.05 * rng.random(), "grad_norm": 0.3 + 0.05 * rng.random(),
            "lr": 6e-5, "step_seconds": 1.0, "tokens_per_second": 4.2e6 * (1 + 0.01 * rng.random()),
            "consumed_samples": step * 2048, "skipped": False, "ln_desync": 0.0}


def _gpu(host: str, index: int, now: float, rng: random.Random) -> dict:
    return {"host": host, "index": index, "uuid": f"GPU-{host}-{index}", "name": "NVIDIA A100-SXM4-80GB",
            "time": now, "temperature_c": 60 + rng.randint(0, 10), "power_w": 350.0, "power_limit_w": 400.0,
            "utilization_pct": 98, "memory_used_bytes": 70 << 30, "memory_total_bytes": 80 << 30,
            "ecc_volatile_double_bit": 0, "ecc_volatile_single_bit": 0, "retired_pages_pending": False,
            "remapped_rows_pending": False, "remapped_rows_failure": False, "xid_errors": [], "throttle_reasons": []}


class SyntheticRun:
    """A run directory written the way 384 ranks, 48 GPU samplers and rank 0's metrics writer would."""

    def __init__(self, root: Path, ranks: int, nodes: int, gpus: int, history_steps: int, seed: int = 0):
        self.run, self.ranks, self.nodes, self.gpus = RunDir(root), ranks, nodes, gpus
        self.rng = random.Random(seed)
        self.step, self.now = 0, time.time() - history_steps
        (root / "telemetry" / "heartbeat").mkdir(parents=True)
        (root / "telemetry" / "gpu").mkdir(parents=True)
        self.advance(history_steps, gpu_every=10)

    def advance(self, seconds: int, gpu_every: int = 10) -> int:
        """``seconds`` of training at 1 step/s; returns the records written."""
        written = 0
        metrics = []
        gpu_lines: dict[str, list[str]] = {f"node{n:03d}": [] for n in range(self.nodes)}
        for _ in range(seconds):
            self.step += 1
            self.now += 1.0
            metrics.append(json.dumps(_metric(self.step, self.now, self.rng)))
            if self.step % gpu_every == 0:
                for host, lines in gpu_lines.items():
                    lines += [json.dumps(_gpu(host, i, self.now, self.rng)) for i in range(self.gpus)]
        with open(self.run.metrics, "a") as handle:
            handle.write("\n".join(metrics) + "\n")
        written += len(metrics)
        for host, lines in gpu_lines.items():
            if lines:
                with open(self.run.telemetry / "gpu" / f"{host}.jsonl", "a") as handle:
                    handle.write("\n".join(lines) + "\n")
                written += len(lines)
        for rank in range(self.ranks):  # each rank replaces its heartbeat (the newest state only)
            beat = {"rank": rank, "host": f"node{rank // 8:03d}", "pid": 1000 + rank, "step": self.step,
                    "time": self.now, "phase": "step", "stage": rank // 32, "dp_rank": rank % 8, "tp": 4,
                    "forward_s": 0.3, "forward_s_recent": [0.3] * 16}
            (self.run.telemetry / "heartbeat" / f"rank-{rank:05d}.json").write_text(json.dumps(beat))
        written += self.ranks
        return written


def _parse_baseline(run: RunDir, tail_records: int, gpu_tail: int) -> float:
    """CPU seconds to read and json-parse what a pass reads: the metrics tail, every heartbeat, GPU tails."""
    started = time.process_time()
    lines = run.metrics.read_text().splitlines()[-tail_records:]
    [json.loads(line) for line in lines]
    for path in (run.telemetry / "heartbeat").glob("rank-*.json"):
        json.loads(path.read_text())
    for path in (run.telemetry / "gpu").glob("*.jsonl"):
        [json.loads(line) for line in path.read_text().splitlines()[-gpu_tail:]]
    return time.process_time() - started


def run(ranks: int = 384, nodes: int = 48, gpus: int = 8, history_steps: int = 3600, passes: int = 10,
        interval_s: int = 5) -> dict:
    base = Path(tempfile.mkdtemp(prefix="bigops-watch-scale-"))
    try:
        synth = SyntheticRun(base / "run", ranks, nodes, gpus, history_steps)
        state = WatchState.load(base / "run" / "watchdog" / "state.json")
        config = WatchConfig()
        cpu, wall, ingested, baseline = [], [], [], []
        for _ in range(passes):
            records = synth.advance(interval_s)
            started_wall, started_cpu = time.perf_counter(), time.process_time()
            findings, _ = tick(synth.run, state, now=synth.now, config=config)
            cpu.append(time.process_time() - started_cpu)
            wall.append(time.perf_counter() - started_wall)
            ingested.append(records)
            baseline.append(_parse_baseline(synth.run, config.tail_records, 256))
        cpu_s, wall_s, base_s = statistics.median(cpu), statistics.median(wall), statistics.median(baseline)
        per_pass = statistics.median(ingested)
        return {
            "benchmark": "watchdog_scale",
            "config": {"ranks": ranks, "nodes": nodes, "gpus_per_node": gpus, "history_steps": history_steps,
                       "steps_per_second": 1, "interval_s": interval_s, "passes": passes,
                       "tail_records": config.tail_records},
            "pass_cpu_s": cpu_s, "pass_wall_s": wall_s,
            "new_records_per_pass": per_pass,
            "records_per_cpu_second": per_pass / cpu_s if cpu_s else None,
            "cpu_share_at_interval": cpu_s / interval_s,
            "parse_baseline_cpu_s": base_s,
            "ratio_pass_vs_parse_baseline": cpu_s / base_s if base_s else None,
            "findings_on_clean_run": len(findings),
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("ranks", 384), ("nodes", 48), ("gpus", 8), ("history_steps", 3600), ("passes", 10),
                          ("interval_s", 5)):
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=default)
    return main_of(parser, run, report, argv)


def report(result: dict) -> None:
    c = result["config"]
    print(f"watchdog scale: {c['ranks']} ranks, {c['nodes']} x {c['gpus_per_node']} GPUs, 1 step/s, a pass "
          f"every {c['interval_s']} s over a {c['history_steps']}-step history")
    print(f"  one pass: {result['pass_cpu_s'] * 1e3:.0f} ms CPU ({result['pass_wall_s'] * 1e3:.0f} ms wall) for "
          f"{result['new_records_per_pass']:.0f} new records -> {result['records_per_cpu_second']:,.0f} "
          f"records per CPU second")
    print(f"  CPU share at a {c['interval_s']} s interval: {result['cpu_share_at_interval']:.1%} of one core")
    print(f"  baseline (read + json-parse the same files): {result['parse_baseline_cpu_s'] * 1e3:.0f} ms; "
          f"pass / baseline = {result['ratio_pass_vs_parse_baseline']:.2f}")
    print(f"  findings on this clean run: {result['findings_on_clean_run']}")


if __name__ == "__main__":
    main()
