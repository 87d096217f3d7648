"""Turn one watchdog scan into Prometheus metric families, and serve them (127.0.0.1 by default)."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from bigops.metrics import names as m
from trainer.rundir import RunDir, read_run_config


ACTIONS = ("restart", "rollback", "kill", "give-up", "sync-layernorm")
"""Always exported (from 0), so that rate() and increase() see the first one."""
GOODPUT_EVERY_S = 60.0
"""The goodput split reads the run's whole history: recomputed at most this often (it moves slowly)."""


def startup_facts(root: Path) -> dict:
    """The last launch's start-up, phase -> max seconds over ranks (empty before a launch's first step)."""
    from bigops.goodput import facts
    startups = facts.startups(RunDir(root))
    if not startups:
        return {}
    return {name: p["max_s"] for name, p in startups[-1]["phases"].items()
            if isinstance(p, dict) and isinstance(p.get("max_s"), (int, float))}


def goodput_facts(root: Path) -> dict:
    """The goodput split and the optimal checkpoint interval (``bigops goodput``; empty before the first step)."""
    from bigops.goodput import facts, report
    run = RunDir(root)
    out: dict = {}
    records = facts.read_records(run)
    if records.steps:
        r = report.build(str(root), records, facts.save_interval(run))
        out.update(goodput=dict(r.goodput.seconds), goodput_ratio=r.goodput.ratio,
                   optimal_interval=r.advice.optimal_steps)
    return out


def _family(metric: m.Metric):
    cls = CounterMetricFamily if metric.kind == "counter" else GaugeMetricFamily
    name = metric.name.removesuffix("_total") if metric.kind == "counter" else metric.name
    return cls(name, metric.help, labels=list(metric.labels))


class EventCounter:
    """Counts ``action`` events in events.jsonl by action, reading only what was appended since last time."""

    def __init__(self, path: Path):
        self.path, self.offset, self.counts = path, 0, Counter()

    def update(self) -> Counter:
        try:
            size = self.path.stat().st_size
        except OSError:
            return self.counts
        if size < self.offset:  # replaced or truncated: count again
            self.offset, self.counts = 0, Counter()
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read(size - self.offset)
        complete = data[:data.rfind(b"\n") + 1]  # an unterminated last line is being written
        self.offset += len(complete)
        for raw in complete.splitlines():
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("type") == "action" and isinstance(event.get("action"), str):
                self.counts[event["action"]] += 1
        return self.counts


def run_dir_facts(root: Path, events: EventCounter, facts: dict) -> dict:
    """What the scan does not carry: token counts (run.toml's batch and sequence length), the filesystem's
    free space, and the watchdog's actions so far."""
    from trainer.config import TrainConfig
    from trainer.data.schedule import consumed_after
    out: dict = {"actions": dict(events.update())}
    cfg = read_run_config(RunDir(root))
    train = cfg.train if cfg is not None else TrainConfig()
    seq, batch = train.seq_length, train.global_batch_size
    consumed = (facts.get("last_record") or {}).get("consumed_samples")
    if isinstance(consumed, int) and isinstance(seq, int):
        out["consumed_tokens"] = consumed * seq
    target = facts.get("target_step")
    if isinstance(target, int) and isinstance(seq, int) and isinstance(batch, int):  # through a ramp-up's batches
        out["target_tokens"] = consumed_after(0, target, batch, train.rampup_batch_size) * seq
    try:
        st = os.statvfs(root)
        out["disk_free"], out["disk_size"] = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    except OSError:
        pass
    return out


class RunCollector:
    """A prometheus-client collector over the latest scan (set by the daemon after every tick).

    ``run_dir`` (optional) adds what the scan does not carry: tokens, disk space, actions taken."""

    def __init__(self, run_name: str, run_dir: Path | None = None):
        self.run = run_name
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.events = EventCounter(RunDir(self.run_dir).events) if self.run_dir is not None else None
        self.facts: dict = {}
        self.extra: dict = {}
        self.findings: list = []
        self.reported = Counter()
        self.tick_time: float | None = None
        self.up = 0
        self.goodput: dict = {}
        """The goodput split, recomputed every GOODPUT_EVERY_S (every tick until the first step)."""
        self.goodput_at: float | None = None
        self.startup: dict = {}

    def update(self, facts: dict, findings: list, new_findings: list, now: float) -> None:
        extra = run_dir_facts(self.run_dir, self.events, facts) if self.run_dir is not None else {}
        if self.run_dir is not None:
            self.startup = startup_facts(self.run_dir)  # one small file: every tick
            if not self.goodput or self.goodput_at is None or not 0 <= now - self.goodput_at < GOODPUT_EVERY_S:
                self.goodput, self.goodput_at = goodput_facts(self.run_dir), now
        self.facts, self.extra, self.findings, self.tick_time, self.up = facts, extra, findings, now, 1
        for f in new_findings:
            self.reported[(f.kind, f.severity)] += 1

    def collect(self):
        """Every metric of ``bigops.metrics.names`` from the latest pass's facts (a metric without a value is
        left out, never zero)."""
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
        add(m.CHAIN_QUEUED, (self.facts.get("chain") or {}).get("queued"))
        add(m.CONSUMED_TOKENS, self.extra.get("consumed_tokens"))
        add(m.TARGET_TOKENS, self.extra.get("target_tokens"))
        add(m.DISK_FREE, self.extra.get("disk_free"))
        add(m.DISK_SIZE, self.extra.get("disk_size"))
        if "actions" in self.extra:
            for action in sorted(set(self.extra["actions"]) | set(ACTIONS)):
                add(m.ACTIONS, self.extra["actions"].get(action, 0), action)
        for host, samples in sorted((self.facts.get("gpus") or {}).items()):
            _add_gpu_samples(add, host, samples)
        for part, seconds in (self.goodput.get("goodput") or {}).items():
            add(m.GOODPUT_SECONDS, seconds, part)
        add(m.GOODPUT_RATIO, self.goodput.get("goodput_ratio"))
        add(m.CKPT_INTERVAL_OPTIMAL, self.goodput.get("optimal_interval"))
        for phase, seconds in self.startup.items():
            add(m.STARTUP_SECONDS, seconds, phase)
        for (kind, severity), count in sorted(self.reported.items()):
            add(m.FINDINGS, count, kind, severity)
        for kind, severity in sorted({(f.kind, f.severity) for f in self.findings}):
            add(m.OPEN, 1, kind, severity)
        yield from families.values()


def _add_gpu_samples(add, host: str, samples: list[dict]) -> None:
    """One host's GPU metrics through ``add(metric, value, *labels)``: its last sample time, the XID errors
    counted over all its samples, which GPUs answered the latest sample, and each of those GPUs' readings."""
    last_time = max(s["time"] for s in samples)
    add(m.GPU_SAMPLE, last_time, host)
    latest = {s["index"] for s in samples if s["time"] == last_time}
    xids: Counter = Counter()
    for s in samples:
        for xid in s.get("xid_errors") or []:
            xids[(str(s["index"]), str(xid))] += 1
    for (gpu, xid), count in sorted(xids.items()):
        add(m.GPU_XID, count, host, gpu, xid)
    for index in sorted({s["index"] for s in samples}):
        add(m.GPU_VISIBLE, index in latest, host, str(index))
    for s in samples:
        if s["time"] != last_time:
            continue
        gpu = str(s["index"])
        for reason in sorted(set(s.get("throttle_reasons") or [])):
            add(m.GPU_THROTTLED, 1, host, gpu, str(reason))
        add(m.GPU_TEMP, s.get("temperature_c"), host, gpu)
        add(m.GPU_POWER, s.get("power_w"), host, gpu)
        util = s.get("utilization_pct")
        add(m.GPU_UTIL, util / 100 if isinstance(util, (int, float)) else None, host, gpu)
        add(m.GPU_MEM, s.get("memory_used_bytes"), host, gpu)
        add(m.GPU_DBE, s.get("ecc_volatile_double_bit"), host, gpu)


def serve(collector: RunCollector, port: int, address: str = "127.0.0.1") -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    start_http_server(port, addr=address, registry=registry)
    return registry


def serve_run(run, port: int, address: str = "127.0.0.1") -> RunCollector:
    """Serve one run's metrics (``--metrics-port`` of ``bigops watch`` and ``bigops launch --watch``); the
    caller feeds the collector each watchdog pass. A port that cannot be bound is a one-line ConfigError."""
    from trainer.config import ConfigError
    collector = RunCollector(run.root.resolve().name, run_dir=run.root)
    try:
        serve(collector, port, address)
    except (OSError, OverflowError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"--metrics-port {port}: cannot listen on {address} ({reason})") from None
    return collector
