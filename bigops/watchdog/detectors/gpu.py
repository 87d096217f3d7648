"""GPU health from NVML samples (``telemetry/gpu/<host>.jsonl``): heat, double-bit ECC, XIDs, row remapping,
hardware throttling, a GPU that disappeared, and a node whose sampler went silent."""

from __future__ import annotations

from dataclasses import dataclass

from bigops.watchdog.findings import Finding
from trainer.config import WatchdogConfig

# XIDs that mean the hardware needs attention (NVIDIA's XID catalogue): DBE, row remap events, NVLink,
# fell off the bus, high SBE rate, contained/uncontained ECC, GSP errors. Others (13, 31, 43...) are
# usually the application's own faults.
CRITICAL_XIDS = frozenset({48, 62, 63, 64, 74, 79, 92, 94, 95, 119, 120})
HW_THROTTLE = ("hw_slowdown", "hw_thermal_slowdown", "hw_power_brake")


@dataclass(frozen=True)
class GpuConfig:
    temperature_warning_c: float = WatchdogConfig.gpu_temperature_warning_c
    """GpuHot (warning) at or above this (``watchdog.gpu_temperature_warning_c``)."""
    temperature_critical_c: float = WatchdogConfig.gpu_temperature_critical_c
    """GpuHot (critical) at or above this (``watchdog.gpu_temperature_critical_c``)."""
    stale_after_s: float = WatchdogConfig.gpu_sampler_silent_s
    """GpuSamplerSilent when a host's newest sample is older than this (``watchdog.gpu_sampler_silent_s``)."""
    xid_window_s: float = 1800.0
    """An XID stays in view this long after the sample that reported it (``bigops.watchdog.gpu_stream``)."""


def detect_gpu(samples_by_host: dict[str, list[dict]], now: float, config: GpuConfig = GpuConfig()) -> list[Finding]:
    """``samples_by_host``: each host's recent sample records, oldest first."""
    findings = []
    for host, samples in sorted(samples_by_host.items()):
        if not samples:
            continue
        last_time = max(s["time"] for s in samples)
        latest = {s["index"]: s for s in samples if s["time"] == last_time}
        ever = {s["index"]: s for s in samples}
        if now - last_time > config.stale_after_s:
            findings.append(Finding("GpuSamplerSilent", "warning", f"{host}: no GPU sample for {now - last_time:.0f} s",
                                    key=f"GpuSamplerSilent:{host}", evidence={"host": host, "last_time": last_time}))
        for index in sorted(set(ever) - set(latest)):
            findings.append(Finding("GpuMissing", "critical", f"{host} GPU {index} ({ever[index].get('uuid')}) is no "
                                    f"longer visible to NVML", key=f"GpuMissing:{host}:{index}",
                                    evidence={"host": host, "index": index, "uuid": ever[index].get("uuid")}))
        for index, s in sorted(latest.items()):
            where = f"{host} GPU {index}"
            base = {"host": host, "index": index, "uuid": s.get("uuid")}
            temp = s.get("temperature_c")
            if temp is not None and temp >= config.temperature_warning_c:
                severity = "critical" if temp >= config.temperature_critical_c else "warning"
                findings.append(Finding("GpuHot", severity, f"{where} at {temp:.0f} C", key=f"GpuHot:{host}:{index}",
                                        evidence={**base, "temperature_c": temp}))
            dbe = s.get("ecc_volatile_double_bit")
            if dbe:
                findings.append(Finding("GpuEccDoubleBit", "critical", f"{where}: {dbe} uncorrected ECC error(s)",
                                        key=f"GpuEccDoubleBit:{host}:{index}", evidence={**base, "count": dbe}))
            xids = sorted({x for smp in samples if smp["index"] == index for x in (smp.get("xid_errors") if isinstance(smp.get("xid_errors"), list) else [])
                           if isinstance(x, int) and not isinstance(x, bool)})
            for xid in xids:  # one incident per GPU and code: an older XID ageing out changes nothing
                findings.append(Finding("GpuXid", "critical" if xid in CRITICAL_XIDS else "warning",
                                        f"{where}: XID {xid}", key=f"GpuXid:{host}:{index}:{xid}",
                                        evidence={**base, "xid": xid, "xids": xids}))
            if s.get("remapped_rows_failure") or s.get("remapped_rows_pending") or s.get("retired_pages_pending"):
                findings.append(Finding("GpuRowRemap", "critical" if s.get("remapped_rows_failure") else "warning",
                                        f"{where}: memory rows {'failed to remap' if s.get('remapped_rows_failure') else 'pending remap/retirement (reset the GPU)'}",
                                        key=f"GpuRowRemap:{host}:{index}", evidence=base))
            throttled = [r for r in s.get("throttle_reasons") or [] if r in HW_THROTTLE]
            if throttled:
                findings.append(Finding("GpuThrottled", "warning", f"{where} throttled: {', '.join(throttled)}",
                                        key=f"GpuThrottled:{host}:{index}", evidence={**base, "reasons": throttled}))
    return findings
