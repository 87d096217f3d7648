"""A fake GPU backend for tests and demos: the same interface as NVML, with faults you script.

``FakeGpuBackend(n_gpus=8)`` reports healthy GPUs; ``inject(index, **fields)`` changes what a GPU reports
from then on (``temperature_c=95``, ``ecc_volatile_double_bit=1``, ``xid_errors=[79]``...); ``remove(index)``
makes it disappear, as a GPU that fell off the bus. ``from_spec("8")`` or ``from_spec("8:3=xid79,5=hot")``
builds one from the command line (``bigops gpu-monitor --fake``).
"""

from __future__ import annotations

import time
from dataclasses import replace

from bigops.gpu.interface import GpuSample

PRESETS = {
    "hot": {"temperature_c": 95.0, "throttle_reasons": ["hw_thermal_slowdown"]},
    "ecc": {"ecc_volatile_double_bit": 2},
    "remap": {"remapped_rows_pending": True},
}


class FakeGpuBackend:
    def __init__(self, n_gpus: int = 8, host: str = "fake-node", clock=time.time):
        self.clock = clock
        self.gpus = {i: GpuSample(host=host, index=i, uuid=f"GPU-fake-{host}-{i}", name="Fake A100-SXM4-80GB",
                                  time=0.0, temperature_c=55.0, power_w=300.0, power_limit_w=400.0,
                                  utilization_pct=97.0, memory_used_bytes=60 * 2**30, memory_total_bytes=80 * 2**30,
                                  ecc_volatile_double_bit=0, ecc_volatile_single_bit=0, retired_pages_pending=False,
                                  remapped_rows_pending=False, remapped_rows_failure=False)
                     for i in range(n_gpus)}
        self.pending_xids: dict[int, list[int]] = {}

    def inject(self, index: int, **fields) -> None:
        xids = fields.pop("xid_errors", None)
        if xids:
            self.pending_xids.setdefault(index, []).extend(xids)
        self.gpus[index] = replace(self.gpus[index], **fields)

    def remove(self, index: int) -> None:
        self.gpus.pop(index, None)

    def sample(self) -> list[GpuSample]:
        now = self.clock()
        out = [replace(g, time=now, xid_errors=self.pending_xids.pop(i, [])) for i, g in sorted(self.gpus.items())]
        return out

    def close(self) -> None:
        pass

    @classmethod
    def from_spec(cls, spec: str, host: str = "fake-node") -> "FakeGpuBackend":
        count, _, faults = spec.partition(":")
        fake = cls(int(count), host=host)
        for item in filter(None, faults.split(",")):
            index, _, fault = item.partition("=")
            if fault.startswith("xid"):
                fake.inject(int(index), xid_errors=[int(fault[3:])])
            elif fault == "gone":
                fake.remove(int(index))
            else:
                fake.inject(int(index), **PRESETS[fault])
        return fake
