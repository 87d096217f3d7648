"""GPU samples read once (``bigops.watchdog.gpu_stream``): each pass reads only what the samplers appended,
through the summary's saved form as a restarted watchdog would; the findings equal a fresh read of the tails;
XIDs stay in view for ``xid_window_s`` and then age out; a replaced file is read again from its tail."""

import json

from bigops.gpu.fake import FakeGpuBackend
from bigops.gpu.monitor import gpu_log, sample_once
from bigops.watchdog.detectors.gpu import detect_gpu
from bigops.watchdog.gpu_stream import GpuStream
from bigops.watchdog.scan import read_gpu_samples
from trainer.rundir import RunDir


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def reloaded(stream: GpuStream) -> GpuStream:
    return GpuStream(json.loads(json.dumps(stream.to_json())), stream.xid_window_s)


def kinds(samples, now):
    return sorted((f.key, f.severity) for f in detect_gpu(samples, now))


def test_following_the_files_finds_what_a_fresh_read_finds_and_reads_each_line_once(tmp_path, monkeypatch):
    clock, stream = Clock(), GpuStream()
    node = {h: FakeGpuBackend(8, host=h, clock=clock) for h in ("node-a", "node-b")}
    for minute in range(30):
        clock.t += 60
        if minute == 10:
            node["node-a"].inject(3, xid_errors=[79])
            node["node-b"].inject(1, temperature_c=91.0)
        if minute == 20:
            node["node-b"].remove(7)
        for backend in node.values():
            sample_once(backend, tmp_path)
        stream = reloaded(stream)
        assert stream.advance(gpu_log(tmp_path, "x").parent) == {}
        assert kinds(stream.samples(), clock.t) == kinds(read_gpu_samples(RunDir(tmp_path)), clock.t)
    assert ("GpuXid:node-a:3:79", "critical") in kinds(stream.samples(), clock.t)
    assert ("GpuMissing:node-b:7", "critical") in kinds(stream.samples(), clock.t)
    # nothing new: no line parsed again
    import bigops.watchdog.gpu_stream as module
    monkeypatch.setattr(module, "read_appended", lambda *a, **k: (_ for _ in ()).throw(AssertionError("read")))
    stream.advance(gpu_log(tmp_path, "x").parent)


def test_an_xid_ages_out_after_its_window_and_a_replaced_file_is_read_again(tmp_path):
    clock, stream = Clock(), GpuStream(xid_window_s=600)
    fake = FakeGpuBackend(2, host="node-a", clock=clock)
    fake.inject(0, xid_errors=[48])
    folder = gpu_log(tmp_path, "node-a").parent
    sample_once(fake, tmp_path)
    stream.advance(folder)
    assert [f.key for f in detect_gpu(stream.samples(), clock.t)] == ["GpuXid:node-a:0:48"]
    for _ in range(11):  # the XID is reported in one sample only; 660 s later it is out of view
        clock.t += 60
        sample_once(fake, tmp_path)
        stream.advance(folder)
    assert detect_gpu(stream.samples(), clock.t) == []
    gpu_log(tmp_path, "node-a").unlink()  # the sampler's file replaced (a new file, another inode)
    fake.inject(1, temperature_c=88.0)
    clock.t += 60
    sample_once(fake, tmp_path)
    stream.advance(folder)
    assert [f.key for f in detect_gpu(stream.samples(), clock.t)] == ["GpuHot:node-a:1"]


def test_wrong_typed_fields_are_named_once_and_the_summary_stays_small(tmp_path):
    folder = tmp_path / "telemetry" / "gpu"
    folder.mkdir(parents=True)
    good = {"host": "n1", "index": 0, "time": 10.0, "temperature_c": 60, "xid_errors": [], "throttle_reasons": []}
    lines = [json.dumps({**good, "index": i, "time": 10.0 + 10 * t}) for t in range(500) for i in range(8)]
    lines.append(json.dumps({**good, "time": 5010.0, "temperature_c": "N/A", "throttle_reasons": 4}))
    (folder / "n1.jsonl").write_text("\n".join(lines) + "\n")
    stream = GpuStream()
    assert stream.advance(folder) == {"n1": ["temperature_c", "throttle_reasons"]}
    assert stream.advance(folder) == {}  # read once
    assert len(json.dumps(stream.to_json())) < 4000  # 8 GPUs: their newest samples, not the history
    assert GpuStream({"format": 1, "files": "junk", "last": {"n1": {"0": "junk"}}}).samples() == {}
