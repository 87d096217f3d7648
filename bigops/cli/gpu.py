"""``bigops gpu-monitor``: the per-node GPU sampler."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from bigops.cli.options import RunDirArg, existing_run


def gpu_monitor(
    run_dir: RunDirArg,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between samples.")] = 10.0,
    once: Annotated[bool, typer.Option("--once", help="One sample, then exit.")] = False,
    fake: Annotated[Optional[str], typer.Option("--fake", help="Use the fake backend: N GPUs, optional faults, "
                                                "e.g. '8' or '8:3=xid79,5=hot,6=ecc,7=gone' (demos, tests).")] = None,
) -> None:
    """Sample this node's GPUs (NVML) into RUN/telemetry/gpu/<host>.jsonl for the watchdog."""
    from bigops.errors import BigopsError, ConfigError
    from bigops.gpu.monitor import sample_once

    if interval <= 0:
        raise ConfigError(f"--interval {interval}: must be positive")
    existing_run(run_dir)
    if fake is not None:
        from bigops.gpu.fake import FakeGpuBackend
        try:
            backend = FakeGpuBackend.from_spec(fake)
        except (ValueError, KeyError) as exc:
            raise ConfigError(f"--fake {fake!r}: {exc}") from None
    else:
        from bigops.gpu.nvml import NvmlBackend, NvmlUnavailable
        try:
            backend = NvmlBackend()
        except NvmlUnavailable as exc:
            raise BigopsError(f"{exc} (use --fake N to try the sampler without one)") from None
    try:
        while True:
            records = sample_once(backend, Path(run_dir))
            if once:
                typer.echo(f"sampled {len(records)} GPU(s)")
                return
            time.sleep(interval)
    finally:
        backend.close()
