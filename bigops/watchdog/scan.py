"""One pass of the watchdog over a run directory: read the records, run every detector, return findings.

Streaming: a ``ScanStream`` (plain JSON, saved in ``watchdog/state.json`` by the daemon) carries the
metrics.jsonl read offset, the GPU sample files' offsets with a summary per host, and the streaming
detectors' states across passes, so each record is read once and an episode is seen once, however long the
run (a re-scan of a sliding tail saw old episodes again under new keys). Without a stream (``bigops status``) a fresh one is warmed from the tail. Every pass reports
every current problem (open episodes included), then what ended, in order (``bigops.watchdog.incidents``).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bigops.watchdog.detectors.desync import DesyncConfig, DesyncTracker
from bigops.watchdog.detectors.disk import DiskConfig, DiskUsage, detect_disk
from bigops.watchdog.detectors.gpu import GpuConfig, detect_gpu
from bigops.watchdog.detectors.grad_norm import GradNormConfig, GradNormSpikeDetector
from bigops.watchdog.detectors.hang import HangConfig, detect_hang
from bigops.watchdog.detectors.liveness import detect_dead_ranks
from bigops.watchdog.detectors.loss_spike import LossSpikeConfig, LossSpikeDetector
from bigops.watchdog.detectors.nonfinite import NonFiniteConfig, NonFiniteDetector
from bigops.watchdog.detectors.straggler import StragglerConfig, detect_stragglers
from bigops.watchdog.detectors.throughput import ThroughputConfig, ThroughputDetector
from bigops.watchdog.findings import Finding
from bigops.watchdog.gpu_stream import GpuStream
from bigops.watchdog.incidents import IncidentPolicy
from bigops.watchdog.telemetry_io import malformed_finding
from trainer.config import WatchdogConfig
from trainer.rundir import (RunDir, last_checkpoint_bytes, latest_checkpoint_facts, number as _number, read_appended,
                            read_exit_record, read_heartbeats, read_tail_at, supervised, target_step)


@dataclass(frozen=True)
class WatchConfig:
    tail_records: int = 2000
    loss: LossSpikeConfig = field(default_factory=LossSpikeConfig)
    grad_norm: GradNormConfig = field(default_factory=GradNormConfig)
    nonfinite: NonFiniteConfig = field(default_factory=NonFiniteConfig)
    hang: HangConfig = field(default_factory=HangConfig)
    throughput: ThroughputConfig = field(default_factory=ThroughputConfig)
    desync: DesyncConfig = field(default_factory=DesyncConfig)
    disk: DiskConfig = field(default_factory=DiskConfig)
    gpu: GpuConfig = field(default_factory=GpuConfig)
    straggler: StragglerConfig = field(default_factory=StragglerConfig)
    incidents: IncidentPolicy = field(default_factory=IncidentPolicy)
    """When an incident is resolved and reminded of (``alerts.resolve_after_s``, ``alerts.remind_every_s``)."""
    on_desync: str = WatchdogConfig.on_desync
    """What the daemon does about a TPDesync finding: sync, notify or ask (``watchdog.on_desync``)."""
    disk_usage: "Callable[[Path], DiskUsage] | None" = None
    """How full the run directory's filesystem is (None: ``os.statvfs``); a simulation scripts it."""
    alive: Callable[[int], bool] | None = None
    """Liveness of a pid on this host: given, the ranks-not-running check runs (standalone ``bigops watch``;
    a supervisor restarts its ranks itself and leaves it None)."""


class ScanStream:
    """What the scan carries from one pass to the next (plain JSON: ``to_json``/``from_json``, never pickle):
    where metrics.jsonl was read up to (offset, inode and size: a replaced or truncated file is re-read from
    its tail), the streaming detectors' states (their segment counter and last step in ``loss``), and the
    few recent values the per-pass detectors need; the GPU samples' ``GpuStream`` (offsets per sampler file)."""

    FORMAT = 1

    def __init__(self, config: "WatchConfig | None" = None, data: dict | None = None):
        config = config or WatchConfig()
        data = data if isinstance(data, dict) and data.get("format") == self.FORMAT else {}
        self.offset: int | None = _int_or(data.get("offset"), None)
        self.inode: int | None = _int_or(data.get("inode"), None)
        self.size: int = _int_or(data.get("size"), 0)
        self.loss = LossSpikeDetector.from_json(_dict(data.get("loss")), config.loss)
        self.grad = GradNormSpikeDetector.from_json(_dict(data.get("grad_norm")), config.grad_norm)
        self.nonfinite = NonFiniteDetector.from_json(_dict(data.get("nonfinite")), config.nonfinite)
        self.desync = DesyncTracker(config.desync, _dict(data.get("desync")))
        self.tput = ThroughputDetector.from_json(_dict(data.get("tput")), config.throughput)
        self.gpu = GpuStream(_dict(data.get("gpu")), config.gpu.xid_window_s)
        self.step_seconds: list[float] = [float(v) for v in data.get("step_seconds") or [] if _number(v)]
        self.last_record: dict | None = _dict(data.get("last_record")) or None
        self.last_val_loss = _number(data.get("last_val_loss"))
        self.last_ln_desync = _number(data.get("last_ln_desync"))
        self.records: int = _int_or(data.get("records"), 0)

    @classmethod
    def from_json(cls, data: dict | None, config: "WatchConfig | None" = None) -> "ScanStream":
        """A stream from its saved form; anything unreadable gives a fresh one (warmed from the tail)."""
        return cls(config, data)

    def to_json(self) -> dict:
        return {"format": self.FORMAT, "offset": self.offset, "inode": self.inode, "size": self.size,
                "loss": self.loss.to_json(), "grad_norm": self.grad.to_json(),
                "nonfinite": self.nonfinite.to_json(), "desync": self.desync.to_json(),
                "tput": self.tput.to_json(), "gpu": self.gpu.to_json(), "step_seconds": self.step_seconds,
                "last_record": self.last_record, "last_val_loss": self.last_val_loss,
                "last_ln_desync": self.last_ln_desync, "records": self.records}

    def feed(self, records: list[dict], config: "WatchConfig") -> list[Finding]:
        """Every record once, in order: the findings the streaming detectors complete (in order)."""
        out: list[Finding] = []
        for r in records:
            step = r["step"]
            loss, grad = _number(r.get("loss")), _number(r.get("grad_norm"))
            out += self.grad.update(step, grad)
            grad_episode = self.grad.episode
            grad_spike = grad_episode is not None and grad_episode.get("step") == step  # this record spiked
            out += self.loss.update(step, loss if loss is not None else float("nan"), grad, grad_spike)
            out += self.nonfinite.update(step, loss, grad, skipped=r.get("skipped") is True)
            desync = _number(r.get("ln_desync"))
            if desync is not None:
                out += self.desync.update(step, desync)
                self.last_ln_desync = desync
            tps = _number(r.get("tokens_per_second"))
            if tps:
                self.tput.update(step, tps)
            seconds = _number(r.get("step_seconds"))
            if seconds:
                self.step_seconds.append(seconds)
            val = _number(r.get("val_loss"))
            if val is not None:
                self.last_val_loss = val
            self.last_record = r
            self.records += 1
        del self.step_seconds[:-200]
        return out

    def current(self) -> list[Finding]:
        """The open episodes: reported every pass so that their incidents stay open."""
        return [*self.loss.current(), *self.grad.current(), *self.nonfinite.current(), *self.desync.current()]

    def advance(self, path: Path, config: "WatchConfig") -> tuple[list[Finding], int]:
        """Read what was appended since the last pass (or warm from the tail: first pass, file replaced or
        truncated) and feed it; the findings completed, and the malformed lines skipped."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return [], 0
        if self.offset is None or st.st_ino != self.inode or st.st_size < self.offset:
            records, skipped, self.offset, (self.inode, self.size) = read_tail_at(path, config.tail_records)
            return self.feed(records, config), skipped
        if st.st_size == self.offset:
            return [], 0
        got = read_appended(path, self.offset)
        if got is None:
            return [], 0
        records, skipped, self.offset, (self.inode, self.size) = got
        return self.feed(records, config), skipped


def _int_or(value, default):
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _pair(p) -> bool:
    return isinstance(p, list) and len(p) == 2 and _int_or(p[0], None) is not None and _number(p[1]) is not None


def read_gpu_samples(run: RunDir, bad: dict | None = None, config: GpuConfig = GpuConfig()) -> dict[str, list[dict]]:
    """The GPU samples in ``detect_gpu``'s shape, read afresh from the files' tails (``bigops status``, tests);
    the daemon follows them with the ``GpuStream`` in its ``ScanStream``."""
    gpus = GpuStream(xid_window_s=config.xid_window_s)
    wrong = gpus.advance(run.gpu_samples)
    if bad is not None:
        bad.update(wrong)
    return gpus.samples()


def disk_usage(path: Path) -> DiskUsage:
    st = os.statvfs(path)
    return DiskUsage(total_bytes=st.f_blocks * st.f_frsize, free_bytes=st.f_bavail * st.f_frsize,
                     total_inodes=st.f_files, free_inodes=st.f_favail)


def compact(findings: list[Finding]) -> list[Finding]:
    """In order, each key's findings with a newer report of the same ongoing problem folded into it (its
    latest state, at its latest position); a ``resolved`` finding and what came before it are both kept: a
    spike confirmed and recovered between two passes gives its critical finding, then its resolve."""
    out: list[Finding | None] = []
    last: dict[str, int] = {}
    for f in findings:
        i = last.get(f.key)
        if not f.resolved and i is not None and not out[i].resolved:
            out[i] = None
        out.append(f)
        last[f.key] = len(out) - 1
    return [f for f in out if f is not None]


def scan_run(run: RunDir, now: float | None = None, config: WatchConfig = WatchConfig(),
             stream: ScanStream | None = None) -> tuple[list[Finding], dict]:
    """All findings of one pass, and the facts they were drawn from (for the status screen and metrics).

    ``stream``: the state of the previous passes (updated in place: the caller saves ``stream.to_json()``);
    None: a fresh one, warmed from the tail of the records (``bigops status``). Findings come in order: what
    the new records completed (a spike confirmed then recovered gives both), then every open problem."""
    now = time.time() if now is None else now
    stream = ScanStream(config) if stream is None else stream
    completed, malformed = stream.advance(run.metrics, config)
    findings: list[Finding] = compact([*completed, *stream.current()])
    findings += stream.tput.current()  # streaming: each record once (a re-run over the history cost ~50 ms a pass)
    wrong_beats: list = []
    beats = read_heartbeats(run, wrong_beats)
    findings += malformed_finding("heartbeat", wrong_beats)
    findings += detect_hang(beats, now, stream.step_seconds, config.hang)
    findings += detect_stragglers(beats, config.straggler)
    if config.alive is not None and beats:
        host = socket.gethostname()
        findings += detect_dead_ranks(beats, host, config.alive, read_exit_record(run),
                                      restarting=supervised(run, config.alive, host))
    if run.root.exists():
        findings += detect_disk((config.disk_usage or disk_usage)(run.root), last_checkpoint_bytes(run), config.disk)
    wrong_gpu = stream.gpu.advance(run.gpu_samples)  # each sample once
    gpu_samples = stream.gpu.samples()
    for host, wrong in sorted(wrong_gpu.items()):
        findings += malformed_finding(f"gpu:{host}", wrong)
    findings += detect_gpu(gpu_samples, now, config.gpu)
    checkpoint = latest_checkpoint_facts(run)
    facts = {"last_record": stream.last_record, "records": stream.records,
             "last_val_loss": stream.last_val_loss, "last_ln_desync": stream.last_ln_desync,
             "target_step": target_step(run), "checkpoint_step": checkpoint.get("step"),
             "checkpoint_time": checkpoint.get("created"), "findings": findings,
             "malformed_records": malformed, "heartbeats": beats, "latest_checkpoint": run.latest_tag(),
             "gpus": gpu_samples}
    return findings, facts
