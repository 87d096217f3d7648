"""GPU health through the one interface: the fake backend (NVML cannot exist here), the sampler's records,
and the GPU detector's findings for every fault kind."""

import subprocess
import sys

from bigops.gpu.fake import FakeGpuBackend
from bigops.gpu.interface import GpuSample
from bigops.gpu.monitor import gpu_log, sample_once
from bigops.watchdog.detectors.gpu import detect_gpu
from bigops.watchdog.scan import read_gpu_samples
from trainer.rundir import RunDir


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def test_fake_backend_speaks_the_interface(tmp_path):
    fake = FakeGpuBackend(4, host="node-a")
    samples = fake.sample()
    assert [type(s) for s in samples] == [GpuSample] * 4 and samples[0].host == "node-a"
    records = sample_once(fake, tmp_path)
    assert len(records) == 4 and gpu_log(tmp_path, "node-a").read_text().count("\n") == 4


def test_healthy_node_is_quiet_and_every_fault_is_found(tmp_path):
    clock = Clock()
    fake = FakeGpuBackend(8, host="node-a", clock=clock)
    sample_once(fake, tmp_path)
    assert detect_gpu(read_gpu_samples(RunDir(tmp_path)), now=clock.t) == []

    clock.t += 10
    fake.inject(1, temperature_c=87.0)
    fake.inject(2, ecc_volatile_double_bit=1)
    fake.inject(3, xid_errors=[79])
    fake.inject(4, xid_errors=[13])
    fake.inject(5, remapped_rows_pending=True)
    fake.inject(6, throttle_reasons=["hw_slowdown", "sw_power_cap"])
    fake.remove(7)
    sample_once(fake, tmp_path)
    found = {(f.kind, f.severity, f.evidence.get("index")) for f in detect_gpu(read_gpu_samples(RunDir(tmp_path)),
                                                                                 now=clock.t)}
    assert found == {("GpuHot", "warning", 1), ("GpuEccDoubleBit", "critical", 2), ("GpuXid", "critical", 3),
                     ("GpuXid", "warning", 4), ("GpuRowRemap", "warning", 5), ("GpuThrottled", "warning", 6),
                     ("GpuMissing", "critical", 7)}


def test_silent_sampler_is_reported(tmp_path):
    clock = Clock()
    sample_once(FakeGpuBackend(2, host="node-b", clock=clock), tmp_path)
    found = detect_gpu(read_gpu_samples(RunDir(tmp_path)), now=clock.t + 600)
    assert [f.kind for f in found] == ["GpuSamplerSilent"]


def test_gpu_monitor_without_nvml_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bigops.cli.main", "gpu-monitor", str(tmp_path), "--once"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "NVML" in proc.stderr and proc.stderr.strip().count("\n") == 0
    ok = subprocess.run([sys.executable, "-m", "bigops.cli.main", "gpu-monitor", str(tmp_path), "--once",
                         "--fake", "8:2=ecc"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "sampled 8 GPU(s)" in ok.stdout
