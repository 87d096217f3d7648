"""``bigops gpu-monitor``: sample this node's GPUs into ``RUN/telemetry/gpu/<host>.jsonl``."""

from __future__ import annotations

from pathlib import Path

from bigops.gpu.interface import GpuBackend
from trainer.rundir import RunDir, append_jsonl


def gpu_log(run_dir: Path, host: str) -> Path:
    return RunDir(run_dir).gpu_log(host)


def sample_once(backend: GpuBackend, run_dir: Path) -> list[dict]:
    """One sample of every GPU, appended as one line per GPU; returns the records."""
    records = [s.as_record() for s in backend.sample()]
    for record in records:
        append_jsonl(gpu_log(run_dir, record["host"]), record)
    return records
