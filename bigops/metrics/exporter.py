"""Turn one watchdog scan into Prometheus metric families, and serve them (127.0.0.1 by default)."""

from __future__ import annotations

from collections import Counter

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from bigops.metrics import names as m


def _family(metric: m.Metric):
    cls = CounterMetricFamily if metric.kind == "counter" else GaugeMetricFamily
    name = metric.name.removesuffix("_total") if metric.kind == "counter" else metric.name
    return cls(name, metric.help, labels=list(metric.labels))


class RunCollector:
    """A prometheus-client collector over the latest scan (set by the daemon after every tick)."""

    def __init__(self, run_name: str):
        self.run = run_name
        self.facts: dict = {}
        self.findings: list = []
        self.reported = Counter()
        self.tick_time: float | None = None
        self.up = 0

    def update(self, facts: dict, findings: list, new_findings: list, now: float) -> None:
        self.facts, self.findings, self.tick_time, self.up = facts, findings, now, 1
        for f in new_findings:
            self.reported[(f.kind, f.severity)] += 1

    def collect(self):
        run = self.run
        families = {metric.name: _family(metric) for metric in m.ALL}

        def add(metric: m.Metric, value, *labels):
            if isinstance(value, bool):
                value = float(value)
            if isinstance(value, (int, float)):
                families[metric.name].add_metric([run, *labels], float(value))

        add(m.UP, self.up)
        add(m.WATCHDOG_TICK, self.tick_time)
        last = self.facts.get("last_record") or {}
        for metric, key in ((m.STEP, "step"), (m.LOSS, "loss"), (m.GRAD_NORM, "grad_norm"), (m.LR, "lr"),
                            (m.TOKENS, "tokens_per_second"), (m.TFLOPS, "tflops_per_gpu"),
                            (m.CONSUMED, "consumed_samples"), (m.PROGRESS, "time"), (m.SKIPPED, "skipped")):
            add(metric, last.get(key))
        for key, metric in (("last_val_loss", m.VAL_LOSS), ("last_ln_desync", m.DESYNC), ("target_step", m.TARGET_STEP),
                            ("checkpoint_step", m.CKPT_STEP), ("checkpoint_time", m.CKPT_TIME)):
            add(metric, self.facts.get(key))
        for rank, beat in sorted((self.facts.get("heartbeats") or {}).items()):
            add(m.HEARTBEAT, beat.get("time"), str(rank))
            add(m.FORWARD, beat.get("forward_s"), str(rank))
        add(m.PENDING, self.facts.get("pending_approvals"))
        for host, samples in sorted((self.facts.get("gpus") or {}).items()):
            last_time = max(s["time"] for s in samples)
            add(m.GPU_SAMPLE, last_time, host)
            for s in samples:
                if s["time"] != last_time:
                    continue
                gpu = str(s["index"])
                add(m.GPU_TEMP, s.get("temperature_c"), host, gpu)
                add(m.GPU_POWER, s.get("power_w"), host, gpu)
                util = s.get("utilization_pct")
                add(m.GPU_UTIL, util / 100 if isinstance(util, (int, float)) else None, host, gpu)
                add(m.GPU_MEM, s.get("memory_used_bytes"), host, gpu)
                add(m.GPU_DBE, s.get("ecc_volatile_double_bit"), host, gpu)
        for (kind, severity), count in sorted(self.reported.items()):
            add(m.FINDINGS, count, kind, severity)
        for kind, severity in sorted({(f.kind, f.severity) for f in self.findings}):
            add(m.OPEN, 1, kind, severity)
        yield from families.values()


def serve(collector: RunCollector, port: int, address: str = "127.0.0.1") -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    start_http_server(port, addr=address, registry=registry)
    return registry
