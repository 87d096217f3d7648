"""The real backend: NVML through ``pynvml`` (from the ``nvidia-ml-py`` package).

Each query that a GPU or driver does not support yields None rather than failing the sample. XID errors
are collected from an NVML event set (critical XIDs) without blocking.
"""

from __future__ import annotations

import socket
import time

from bigops.gpu.interface import GpuSample

THROTTLE_REASONS = {
    "nvmlClocksThrottleReasonHwSlowdown": "hw_slowdown",
    "nvmlClocksThrottleReasonHwThermalSlowdown": "hw_thermal_slowdown",
    "nvmlClocksThrottleReasonHwPowerBrakeSlowdown": "hw_power_brake",
    "nvmlClocksThrottleReasonSwThermalSlowdown": "sw_thermal_slowdown",
    "nvmlClocksThrottleReasonSwPowerCap": "sw_power_cap",
}


class NvmlUnavailable(RuntimeError):
    """No NVML here (no driver, no GPU): one line for the user."""


class NvmlBackend:
    def __init__(self, host: str | None = None):
        try:
            import pynvml
        except ImportError as exc:  # pragma: no cover - nvidia-ml-py is a dependency
            raise NvmlUnavailable(f"pynvml is not installed: {exc}") from None
        self.nvml = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise NvmlUnavailable(f"NVML cannot start here ({exc}): no NVIDIA driver or GPU") from None
        self.host = host or socket.gethostname()
        self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        self.events = None
        try:
            self.events = pynvml.nvmlEventSetCreate()
            for handle in self.handles:
                pynvml.nvmlDeviceRegisterEvents(handle, pynvml.nvmlEventTypeXidCriticalError, self.events)
        except pynvml.NVMLError:
            self.events = None  # not supported (e.g. some MIG or virtualized setups)

    def _q(self, fn, *args):
        try:
            return fn(*args)
        except self.nvml.NVMLError:
            return None

    def _xids(self) -> dict[int, list[int]]:
        seen: dict[int, list[int]] = {}
        if self.events is None:
            return seen
        n = self.nvml
        while True:
            try:
                data = n.nvmlEventSetWait(self.events, 0)
            except n.NVMLError:
                return seen  # timeout: no more events
            index = self.handles.index(data.device) if data.device in self.handles else -1
            seen.setdefault(index, []).append(int(data.eventData))

    def sample(self) -> list[GpuSample]:
        n, now, xids = self.nvml, time.time(), self._xids()
        out = []
        for i, h in enumerate(self.handles):
            util = self._q(n.nvmlDeviceGetUtilizationRates, h)
            mem = self._q(n.nvmlDeviceGetMemoryInfo, h)
            power = self._q(n.nvmlDeviceGetPowerUsage, h)
            limit = self._q(n.nvmlDeviceGetEnforcedPowerLimit, h)
            remapped = self._q(n.nvmlDeviceGetRemappedRows, h)  # (corr, uncorr, pending, failure)
            pending_pages = self._q(n.nvmlDeviceGetRetiredPagesPendingStatus, h)
            reasons = self._q(n.nvmlDeviceGetCurrentClocksThrottleReasons, h) or 0
            name = self._q(n.nvmlDeviceGetName, h)
            uuid = self._q(n.nvmlDeviceGetUUID, h)
            out.append(GpuSample(
                host=self.host, index=i, uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                name=name.decode() if isinstance(name, bytes) else str(name), time=now,
                temperature_c=self._q(n.nvmlDeviceGetTemperature, h, n.NVML_TEMPERATURE_GPU),
                power_w=power / 1000 if power is not None else None,
                power_limit_w=limit / 1000 if limit is not None else None,
                utilization_pct=util.gpu if util is not None else None,
                memory_used_bytes=mem.used if mem is not None else None,
                memory_total_bytes=mem.total if mem is not None else None,
                ecc_volatile_double_bit=self._q(n.nvmlDeviceGetTotalEccErrors, h, n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                                                n.NVML_VOLATILE_ECC),
                ecc_volatile_single_bit=self._q(n.nvmlDeviceGetTotalEccErrors, h, n.NVML_MEMORY_ERROR_TYPE_CORRECTED,
                                                n.NVML_VOLATILE_ECC),
                retired_pages_pending=bool(pending_pages) if pending_pages is not None else None,
                remapped_rows_pending=bool(remapped[2]) if remapped is not None else None,
                remapped_rows_failure=bool(remapped[3]) if remapped is not None else None,
                xid_errors=xids.get(i, []),
                throttle_reasons=[label for attr, label in THROTTLE_REASONS.items()
                                  if reasons & getattr(n, attr, 0)],
            ))
        return out

    def close(self) -> None:
        try:
            if self.events is not None:
                self.nvml.nvmlEventSetFree(self.events)
            self.nvml.nvmlShutdown()
        except self.nvml.NVMLError:
            pass
