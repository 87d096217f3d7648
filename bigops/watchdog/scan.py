"""One pass of the watchdog over a run directory: read the records, run every detector, return findings.

Stateless on purpose: each pass re-reads the recent tail of the records and replays the streaming
detectors over it, so a restarted daemon sees exactly what the previous one saw (deduplication of what was
already reported lives in ``watchdog/state.json``, see ``bigops.watchdog.state``).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bigops.watchdog.detectors.desync import DesyncConfig, desync_episode_start, detect_desync
from bigops.watchdog.detectors.disk import DiskConfig, DiskUsage, detect_disk
from bigops.watchdog.detectors.gpu import GpuConfig, detect_gpu
from bigops.watchdog.detectors.grad_norm import GradNormConfig, GradNormSpikeDetector
from bigops.watchdog.detectors.hang import HangConfig, detect_hang
from bigops.watchdog.detectors.liveness import detect_dead_ranks
from bigops.watchdog.detectors.loss_spike import LossSpikeConfig, LossSpikeDetector
from bigops.watchdog.detectors.nonfinite import NonFiniteConfig, NonFiniteDetector
from bigops.watchdog.detectors.straggler import StragglerConfig, detect_stragglers
from bigops.watchdog.detectors.throughput import ThroughputConfig, detect_throughput_drop
from bigops.watchdog.findings import Finding
from bigops.watchdog.incidents import IncidentPolicy
from trainer.rundir import RunDir

MAX_LINE_BYTES = 64 * 1024  # a record longer than this is hostile or broken: skipped


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
    on_desync: str = "sync"
    """What the daemon does about a TPDesync finding: sync, notify or ask (``watchdog.on_desync``)."""
    alive: Callable[[int], bool] | None = None
    """Liveness of a pid on this host: given, the ranks-not-running check runs (standalone ``bigops watch``;
    a supervisor restarts its ranks itself and leaves it None)."""


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def read_tail(path: Path, max_records: int, required_int: str = "step") -> tuple[list[dict], int]:
    """The last ``max_records`` well-formed metric records, and how many lines were skipped as malformed
    (half-written, not JSON, wrong types, oversized): the daemon never crashes on a bad record."""
    records, skipped = [], 0
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_records * 1024))
            data = handle.read()
    except FileNotFoundError:
        return [], 0
    lines = data.split(b"\n")
    if size > len(data):
        lines = lines[1:]  # the first line may be cut by the seek
    for raw in lines[:-1] if not data.endswith(b"\n") else lines:  # an unterminated last line is being written
        if not raw.strip():
            continue
        if len(raw) > MAX_LINE_BYTES:
            skipped += 1
            continue
        try:
            record = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            skipped += 1
            continue
        key = record.get(required_int) if isinstance(record, dict) else None
        if not isinstance(key, int) or isinstance(key, bool):
            skipped += 1
            continue
        records.append(record)
    return records[-max_records:], skipped


def read_heartbeats(run: RunDir) -> dict[int, dict]:
    beats = {}
    for path in sorted((run.telemetry / "heartbeat").glob("rank-*.json")):
        try:
            if path.stat().st_size > MAX_LINE_BYTES:
                continue
            beat = json.loads(path.read_text())
            rank = beat["rank"]
            if isinstance(rank, int) and _number(beat.get("time")) is not None:
                beats[rank] = beat
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return beats


def read_gpu_samples(run: RunDir, per_host: int = 256) -> dict[str, list[dict]]:
    out = {}
    for path in sorted((run.telemetry / "gpu").glob("*.jsonl")):
        records, _ = read_tail(path, per_host, required_int="index")
        records = [r for r in records if isinstance(r.get("host"), str) and _number(r.get("time")) is not None]
        if records:
            out[records[-1]["host"]] = records
    return out


def target_step(run: RunDir) -> int | None:
    import tomllib
    try:
        value = tomllib.loads(run.run_toml.read_text()).get("train", {}).get("train_steps")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def latest_checkpoint_facts(run: RunDir) -> dict:
    """The step and creation time of the checkpoint ``latest`` names, from its manifest."""
    tag = run.latest_tag()
    if not tag or "/" in tag or tag.startswith("."):
        return {}
    try:
        manifest = json.loads((run.checkpoint(tag) / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: manifest.get(k) for k in ("step", "created", "tag")} if isinstance(manifest, dict) else {}


SUPERVISOR_FILE = "supervisor.json"


def supervisor_path(run: RunDir) -> Path:
    """Written by ``bigops launch --watch`` while it owns the ranks: {"pid", "host", "started"}."""
    return run.root / "watchdog" / SUPERVISOR_FILE


def supervised(run: RunDir, alive: Callable[[int], bool], host: str) -> bool:
    """A live supervisor owns this run's ranks (on another host: assumed live while its file is there)."""
    try:
        data = json.loads(supervisor_path(run).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict) or not isinstance(data.get("pid"), int):
        return False
    return data.get("host") != host or alive(data["pid"])


def read_exit_record(run: RunDir) -> dict | None:
    try:
        data = json.loads(run.exit_record.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def disk_usage(path: Path) -> DiskUsage:
    st = os.statvfs(path)
    return DiskUsage(total_bytes=st.f_blocks * st.f_frsize, free_bytes=st.f_bavail * st.f_frsize,
                     total_inodes=st.f_files, free_inodes=st.f_favail)


def last_checkpoint_bytes(run: RunDir) -> int | None:
    path = run.telemetry / "checkpoints.jsonl"
    records, _ = read_tail(path, 50) if path.exists() else ([], 0)
    saves = [r for r in records if r.get("kind") == "save" and _number(r.get("bytes"))]
    return int(saves[-1]["bytes"]) if saves else None


def scan_run(run: RunDir, now: float | None = None, config: WatchConfig = WatchConfig()) -> tuple[list[Finding], dict]:
    """All findings of one pass, and the facts they were drawn from (for the status screen and metrics)."""
    now = time.time() if now is None else now
    records, malformed = read_tail(run.metrics, config.tail_records)
    findings: list[Finding] = []
    loss_d, grad_d, nan_d = (LossSpikeDetector(config.loss), GradNormSpikeDetector(config.grad_norm),
                             NonFiniteDetector(config.nonfinite))
    for r in records:
        step = r["step"]
        loss, grad = _number(r.get("loss")), _number(r.get("grad_norm"))
        findings += loss_d.update(step, loss if loss is not None else float("nan"))
        findings += grad_d.update(step, grad)
        findings += nan_d.update(step, loss, grad, skipped=r.get("skipped") is True)
    # Streaming detectors report every record of an episode; keep the newest finding per key.
    latest: dict[str, Finding] = {}
    for f in findings:
        latest[f.key] = f
    findings = list(latest.values())
    # Only an ongoing non-finite streak matters now; blips are history (kept for the record).
    throughput = [(r["step"], _number(r.get("tokens_per_second"))) for r in records
                  if _number(r.get("tokens_per_second"))]
    findings += detect_throughput_drop(throughput, config.throughput)
    desync = [r for r in records if _number(r.get("ln_desync")) is not None]
    if desync:
        series = [(r["step"], _number(r["ln_desync"])) for r in desync]
        findings += detect_desync(series[-1][0], series[-1][1], config.desync,
                                  since_step=desync_episode_start(series, config.desync.threshold))
    beats = read_heartbeats(run)
    step_seconds = [s for r in records[-200:] if (s := _number(r.get("step_seconds")))]
    findings += detect_hang(beats, now, step_seconds, config.hang)
    findings += detect_stragglers(beats, config.straggler)
    if config.alive is not None and beats:
        host = socket.gethostname()
        findings += detect_dead_ranks(beats, host, config.alive, read_exit_record(run),
                                      restarting=supervised(run, config.alive, host))
    if run.root.exists():
        findings += detect_disk(disk_usage(run.root), last_checkpoint_bytes(run), config.disk)
    gpu_samples = read_gpu_samples(run)
    findings += detect_gpu(gpu_samples, now, config.gpu)
    val = [r for r in records if _number(r.get("val_loss")) is not None]
    checkpoint = latest_checkpoint_facts(run)
    facts = {"last_record": records[-1] if records else None, "records": len(records),
             "last_val_loss": val[-1]["val_loss"] if val else None,
             "last_ln_desync": desync[-1]["ln_desync"] if desync else None,
             "target_step": target_step(run), "checkpoint_step": checkpoint.get("step"),
             "checkpoint_time": checkpoint.get("created"), "findings": findings,
             "malformed_records": malformed, "heartbeats": beats, "latest_checkpoint": run.latest_tag(),
             "gpus": gpu_samples}
    return findings, facts
