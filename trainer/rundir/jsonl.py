"""Tolerant readers of the run's JSON files: complete lines only (a line being written is left for the next
pass), tails parsed from the end, appended bytes from an offset, and every field type-checked where it is
read (a wrong-typed field is dropped and named, never a crash). The watchdog turns what was dropped into one
``MalformedTelemetry`` finding (``bigops.watchdog.telemetry_io.malformed_finding``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

MAX_LINE_BYTES = 64 * 1024  # a record longer than this is hostile or broken: skipped
MAX_PASS_BYTES = 64 * 2**20  # one pass reads at most this much of metrics.jsonl (the rest: next pass)


def number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def parse_lines(data: bytes, required_int: str = "step") -> tuple[list[dict], int]:
    """The well-formed records of complete lines, and how many were skipped as malformed (not JSON, wrong
    types, oversized): the daemon never crashes on a bad record."""
    records, skipped = [], 0
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        if len(raw) > MAX_LINE_BYTES:
            skipped += 1
            continue
        try:
            record = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            skipped += 1
            continue
        key = record.get(required_int) if isinstance(record, dict) else None
        if not isinstance(key, int) or isinstance(key, bool):
            skipped += 1
            continue
        records.append(record)
    return records, skipped


def read_tail_at(path: Path, max_records: int, required_int: str = "step") -> tuple[list[dict], int, int, tuple]:
    """The last ``max_records`` well-formed records, the malformed count, the byte offset just past the last
    complete line, and the file's (inode, size); an unterminated last line is being written: left for later."""
    try:
        with open(path, "rb") as handle:
            st = os.fstat(handle.fileno())
            size = st.st_size
            start = max(0, size - max_records * 1024)
            handle.seek(start)
            data = handle.read(size - start)
    except FileNotFoundError:
        return [], 0, 0, (None, 0)
    end = data.rfind(b"\n") + 1  # complete lines only
    body = data[:end]
    if start > 0:
        cut = body.find(b"\n") + 1  # the first line may be cut by the seek
        body = body[cut:]
    lines = body.split(b"\n")
    if len(lines) > max_records + 1:  # parse only the last max_records lines (not every line of the window)
        body = b"\n".join(lines[-(max_records + 1):])
    records, skipped = parse_lines(body, required_int)
    return records[-max_records:], skipped, start + end, (st.st_ino, size)


def read_tail(path: Path, max_records: int, required_int: str = "step") -> tuple[list[dict], int]:
    """The last ``max_records`` well-formed records, and how many lines were skipped as malformed."""
    records, skipped, _, _ = read_tail_at(path, max_records, required_int)
    return records, skipped


def read_appended(path: Path, offset: int, limit: int = MAX_PASS_BYTES,
                  required_int: str = "step") -> tuple[list[dict], int, int, tuple] | None:
    """The records of the complete lines appended since ``offset`` (at most ``limit`` bytes), the malformed
    count, the new offset and (inode, size); None when the file is gone."""
    try:
        with open(path, "rb") as handle:
            st = os.fstat(handle.fileno())
            handle.seek(offset)
            data = handle.read(max(0, min(limit, st.st_size - offset)))
    except FileNotFoundError:
        return None
    end = data.rfind(b"\n") + 1
    if end == 0 and len(data) >= limit:  # one line longer than a whole pass: skip it
        end = len(data)
    records, skipped = parse_lines(data[:end], required_int)
    return records, skipped, offset + end, (st.st_ino, st.st_size)

_INT = "int"
_NUM = "number"
_STR = "str"
HEARTBEAT_FIELDS = {"rank": _INT, "pid": _INT, "step": _INT, "stage": _INT, "dp_rank": _INT, "tp": _INT,
                    "time": _NUM, "host": _STR, "phase": _STR, "launch": _STR, "forward_s_recent": list}
GPU_FIELDS = {"index": _INT, "time": _NUM, "host": _STR, "uuid": _STR, "temperature_c": _NUM,
              "ecc_volatile_double_bit": _INT, "xid_errors": list, "throttle_reasons": list,
              "remapped_rows_failure": (bool, int), "remapped_rows_pending": (bool, int),
              "retired_pages_pending": (bool, int)}


def _fits(value, want) -> bool:
    if want == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if want == _NUM:
        return number(value) is not None
    if want == _STR:
        return isinstance(value, str)
    return isinstance(value, want)


def typed(record: dict, fields: dict, bad: list) -> dict:
    """The record without its fields of the wrong type (each one named in ``bad``): a detector reading it
    sees a field missing, never a list where it expects a stage or "N/A" where it expects degrees."""
    out = {}
    for name, value in record.items():
        want = fields.get(name)
        if want is not None and value is not None and not _fits(value, want):
            bad.append(name)
            continue
        out[name] = value
    return out
