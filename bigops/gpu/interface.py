"""The one GPU-health interface: a backend returns one :class:`GpuSample` per GPU it can see.

Every field a GPU cannot report is None, never a guess. The record written to
``telemetry/gpu/<host>.jsonl`` is ``GpuSample.as_record()``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class GpuSample:
    host: str
    index: int
    uuid: str
    name: str
    time: float
    temperature_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    utilization_pct: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    ecc_volatile_double_bit: int | None = None
    """Uncorrected (double-bit) ECC errors since the driver loaded: any is a reason to drain the node."""
    ecc_volatile_single_bit: int | None = None
    retired_pages_pending: bool | None = None
    remapped_rows_pending: bool | None = None
    remapped_rows_failure: bool | None = None
    xid_errors: list[int] = field(default_factory=list)
    """XID error codes seen since the previous sample."""
    throttle_reasons: list[str] = field(default_factory=list)

    def as_record(self) -> dict:
        return asdict(self)


class GpuBackend(Protocol):
    """What the sampler needs from NVML (or from the fake)."""

    def sample(self) -> list[GpuSample]:
        ...

    def close(self) -> None:
        ...
