"""GPU samples read once: ``telemetry/gpu/<host>.jsonl`` followed from a byte offset per file, folded into a
small summary per host that the watchdog carries across passes (plain JSON in ``watchdog/state.json``).

Re-reading the last 256 samples of 48 hosts every pass was 87 % of a pass at BLOOM's size (48 x 8 GPUs,
about 400 ms of CPU per 5 s pass); following the files costs only the samples written since the last pass.

Per host it keeps what the GPU detector and the status screen need, never the whole history:
- the newest sample of every GPU seen since the stream began (the ones at the host's newest sample time are
  "visible"; an older one is a GPU NVML no longer lists: ``GpuMissing`` until it comes back);
- the XID events of the last ``xid_window_s`` seconds as (time, index, code) (an XID is reported in the one
  sample after it happened; the window keeps it in view, then its incident resolves after its quiet period).

A file that is new, replaced (another inode) or shorter than the offset is read from its tail again.
``samples()`` renders the summary in the shape ``detect_gpu`` and the exporter read: per host a list of
sample records, oldest first.
"""

from __future__ import annotations

import os
from pathlib import Path

from bigops.watchdog.detectors.gpu import GpuConfig
from trainer.rundir import GPU_FIELDS, number as _number, read_appended, read_tail_at, typed

TAIL_SAMPLES = 256
"""Samples read from a file's tail when it is first seen (or replaced)."""
MAX_XID_EVENTS = 1024
"""XID events kept per host (an XID storm keeps the newest)."""
KEPT = tuple(GPU_FIELDS) + ("name", "power_w", "power_limit_w", "utilization_pct", "memory_used_bytes",
                            "memory_total_bytes", "ecc_volatile_single_bit")
"""The sample fields kept in the summary (what the detectors, the exporter and the status screen read)."""


class GpuStream:
    FORMAT = 1

    def __init__(self, data: dict | None = None, xid_window_s: float = GpuConfig.xid_window_s):
        data = data if isinstance(data, dict) and data.get("format") == self.FORMAT else {}
        self.xid_window_s = xid_window_s
        self.files: dict[str, dict] = {k: v for k, v in _dict(data.get("files")).items()
                                       if isinstance(v, dict) and _int(v.get("offset")) is not None}
        self.last: dict[str, dict[str, dict]] = {
            host: {i: s for i, s in _dict(by_index).items() if _sample_ok(s)}
            for host, by_index in _dict(data.get("last")).items() if isinstance(by_index, dict)}
        self.xids: dict[str, list[list]] = {
            host: [e for e in events if isinstance(e, list) and len(e) == 3 and _number(e[0]) is not None
                   and _int(e[1]) is not None and _int(e[2]) is not None]
            for host, events in _dict(data.get("xids")).items() if isinstance(events, list)}

    def to_json(self) -> dict:
        return {"format": self.FORMAT, "files": self.files, "last": self.last, "xids": self.xids}

    # -- reading -------------------------------------------------------------------------------------
    def advance(self, gpu_dir: Path) -> dict[str, list[str]]:
        """Fold in what every sampler appended since the last pass; returns {file stem: wrong-typed field
        names} for the lines read now (a ``MalformedTelemetry`` finding each)."""
        bad: dict[str, list[str]] = {}
        try:
            paths = sorted(gpu_dir.glob("*.jsonl"))
        except OSError:
            return bad
        for path in paths:
            records = self._read(path)
            wrong: list[str] = []
            for record in records:
                self._fold(typed(record, GPU_FIELDS, wrong))
            if wrong:
                bad[path.stem] = wrong
        self._age()
        return bad

    def _read(self, path: Path) -> list[dict]:
        try:
            st = os.stat(path)
        except OSError:
            return []
        seen = self.files.get(path.name)
        if seen is None or seen.get("inode") != st.st_ino or st.st_size < seen["offset"]:
            records, _, offset, (inode, size) = read_tail_at(path, TAIL_SAMPLES, required_int="index")
        elif st.st_size == seen["offset"]:
            return []
        else:
            got = read_appended(path, seen["offset"], required_int="index")
            if got is None:
                return []
            records, _, offset, (inode, size) = got
        self.files[path.name] = {"offset": offset, "inode": inode, "size": size}
        return records

    def _fold(self, s: dict) -> None:
        host, t, index = s.get("host"), _number(s.get("time")), _int(s.get("index"))
        if not isinstance(host, str) or t is None or index is None:
            return
        by_index = self.last.setdefault(host, {})
        old = by_index.get(str(index))
        if old is None or t >= old["time"]:
            by_index[str(index)] = {k: s[k] for k in KEPT if k in s}
        for xid in s.get("xid_errors") or ():
            if _int(xid) is not None:
                self.xids.setdefault(host, []).append([t, index, xid])

    def _age(self) -> None:
        for host, events in self.xids.items():
            newest = max((s["time"] for s in self.last.get(host, {}).values()), default=None)
            if newest is not None:
                events[:] = [e for e in events if e[0] >= newest - self.xid_window_s]
            del events[:-MAX_XID_EVENTS]

    # -- the shape the detectors read ----------------------------------------------------------------
    def samples(self) -> dict[str, list[dict]]:
        """Per host: one record per XID event (time, index, that code), then the newest sample of every GPU
        (its own ``xid_errors`` left out: the events carry them), oldest first."""
        out: dict[str, list[dict]] = {}
        for host, by_index in sorted(self.last.items()):
            if not by_index:
                continue
            events = [{"host": host, "index": i, "time": t, "uuid": by_index.get(str(i), {}).get("uuid"),
                       "xid_errors": [x]} for t, i, x in self.xids.get(host, [])]
            latest = sorted(({**s, "xid_errors": []} for s in by_index.values()), key=lambda s: (s["time"], s["index"]))
            out[host] = events + latest
        return out


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _sample_ok(s) -> bool:
    return isinstance(s, dict) and isinstance(s.get("host"), str) and _number(s.get("time")) is not None \
        and _int(s.get("index")) is not None
