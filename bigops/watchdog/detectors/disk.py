"""Disk space and inodes of the run directory's filesystem (BLOOM's 2.3 TB checkpoints filled quotas)."""

from __future__ import annotations

from dataclasses import dataclass

from bigops.watchdog.findings import Finding


@dataclass(frozen=True)
class DiskConfig:
    checkpoints_ahead: float = 2.0
    """Critical when the free space holds fewer than this many more checkpoints of the last one's size."""
    min_free_fraction: float = 0.05
    min_free_inodes_fraction: float = 0.05


@dataclass(frozen=True)
class DiskUsage:
    total_bytes: int
    free_bytes: int
    total_inodes: int
    free_inodes: int


def detect_disk(usage: DiskUsage, last_checkpoint_bytes: int | None, config: DiskConfig = DiskConfig()
                ) -> list[Finding]:
    findings = []
    need = (last_checkpoint_bytes or 0) * config.checkpoints_ahead
    if last_checkpoint_bytes and usage.free_bytes < need:
        findings.append(Finding("DiskFullSoon", "critical", f"{usage.free_bytes / 2**30:.1f} GiB free: fewer than "
                                f"{config.checkpoints_ahead:g} more checkpoints of {last_checkpoint_bytes / 2**30:.1f} GiB",
                                key="DiskFullSoon", evidence={**usage.__dict__, "checkpoint_bytes": last_checkpoint_bytes}))
    elif usage.total_bytes and usage.free_bytes / usage.total_bytes < config.min_free_fraction:
        findings.append(Finding("DiskFullSoon", "warning", f"{usage.free_bytes / usage.total_bytes:.1%} of the run "
                                f"directory's filesystem is free", key="DiskFullSoon", evidence=dict(usage.__dict__)))
    if usage.total_inodes and usage.free_inodes / usage.total_inodes < config.min_free_inodes_fraction:
        findings.append(Finding("InodesLow", "warning", f"{usage.free_inodes:,} inodes free "
                                f"({usage.free_inodes / usage.total_inodes:.1%})", key="InodesLow",
                                evidence=dict(usage.__dict__)))
    return findings
