"""Steering a running job: control files, signals and a time budget, decided together on every step.

Every rank polls what it can see (rank 0: the ``control/`` files and the clock; every rank: the signals it
received); one all-reduce (MAX) of a few flags makes every rank act on the same step. Skip ranges are read
by rank 0 when the file changes and broadcast to all.

- ``control/kill-switch``: save, then exit with STOPPED_ON_REQUEST (the file stays: a restarted job stops
  again until someone removes it, exactly BLOOM's kill switch).
- ``control/save-switch``: save, remove the file, go on.
- ``control/sync-layernorm``: average the TP-duplicated parameters (and their fp32 masters and Adam moments)
  over each TP group, in place, then remove the file (live surgery; the watchdog writes it on TP desync).
- ``control/skip-ranges``: sample ranges to skip, one ``START-END`` (end exclusive) per line or a JSON list
  of pairs; used after a loss-spike rollback.
- SIGUSR1 / SIGTERM and ``train.exit_duration_in_mins``: save, then exit with STOPPED_BY_SIGNAL.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

KILL_SWITCH = "kill-switch"
SAVE_SWITCH = "save-switch"
SKIP_RANGES = "skip-ranges"
SYNC_LAYERNORM = "sync-layernorm"
MAX_CONTROL_FILE_BYTES = 1 << 20  # a hostile or runaway file is refused, not read into memory


@dataclass(frozen=True)
class Decision:
    save: bool = False
    stop_requested: bool = False  # kill switch
    stop_signal: bool = False  # signal or time budget
    skip_ranges_changed: bool = False
    sync_layernorm: bool = False

    @property
    def stop(self) -> bool:
        return self.stop_requested or self.stop_signal


def parse_skip_ranges(text: str) -> list[tuple[int, int]]:
    """``START-END`` lines (``#`` comments allowed) or a JSON list of pairs -> sorted, merged ranges.

    Raises ValueError with a one-line reason on anything else.
    """
    text = text.strip()
    if not text:
        return []
    if text.startswith("["):
        items = json.loads(text)
        if not isinstance(items, list) or not all(isinstance(p, list) and len(p) == 2 for p in items):
            raise ValueError("a JSON skip-ranges file must be a list of [start, end] pairs")
        pairs = [(p[0], p[1]) for p in items]
    else:
        pairs = []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            start, sep, end = line.partition("-")
            if not sep:
                raise ValueError(f"line {number}: expected START-END, got {line!r}")
            pairs.append((start.strip(), end.strip()))
    ranges = []
    for start, end in pairs:
        try:
            start, end = int(start), int(end)
        except (TypeError, ValueError):
            raise ValueError(f"range {start}-{end}: bounds must be integers") from None
        if start < 0 or end <= start:
            raise ValueError(f"range {start}-{end}: need 0 <= start < end")
        ranges.append((start, end))
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


@dataclass
class ControlState:
    """What the poller remembers between steps (on every rank; file fields used on rank 0)."""

    control_dir: Path
    started: float = field(default_factory=time.monotonic)
    exit_duration_s: float | None = None
    signal_received: int | None = None
    skip_ranges: list[tuple[int, int]] = field(default_factory=list)
    _skip_mtime: float | None = None

    def install_signal_handlers(self) -> None:
        def handler(signum, frame):
            self.signal_received = signum
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, handler)


def _read_small(path: Path) -> str:
    """A control file's text: a regular file (not a link, FIFO or device: /dev/zero would never end), small."""
    import stat
    info = path.lstat()
    if not stat.S_ISREG(info.st_mode):
        raise ValueError("not a regular file (a link, FIFO or device is refused)")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_CONTROL_FILE_BYTES + 1)
    if len(data) > MAX_CONTROL_FILE_BYTES:
        raise ValueError(f"larger than {MAX_CONTROL_FILE_BYTES} bytes")
    return data.decode()


def poll_local(state: ControlState, is_rank0: bool) -> list[int]:
    """This rank's flags [save, stop_requested, stop_signal, skip_ranges_changed, sync_layernorm]."""
    flags = [0, 0, 1 if state.signal_received is not None else 0, 0, 0]
    if not is_rank0:
        return flags
    if (state.control_dir / KILL_SWITCH).exists():
        flags[1] = 1
    if (state.control_dir / SAVE_SWITCH).exists():
        flags[0] = 1
    if (state.control_dir / SYNC_LAYERNORM).exists():
        flags[4] = 1
    if state.exit_duration_s is not None and time.monotonic() - state.started >= state.exit_duration_s:
        flags[2] = 1
    path = state.control_dir / SKIP_RANGES
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        mtime = None
    if mtime != state._skip_mtime:
        state._skip_mtime = mtime
        try:
            ranges = parse_skip_ranges(_read_small(path)) if mtime is not None else []
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            print(f"warning: ignoring {path}: {exc}", file=sys.stderr, flush=True)
        else:
            if ranges != state.skip_ranges:
                state.skip_ranges = ranges
                flags[3] = 1
    return flags


def decide(state: ControlState, is_rank0: bool) -> Decision:
    """Poll, then agree with every other rank (one small all-reduce, plus a broadcast on a skip change)."""
    flags = torch.tensor(poll_local(state, is_rank0), dtype=torch.int32)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    save, stop_requested, stop_signal, skip_changed, sync = (bool(v) for v in flags.tolist())
    if skip_changed:
        holder = [state.skip_ranges]
        dist.broadcast_object_list(holder, src=0)
        state.skip_ranges = [tuple(r) for r in holder[0]]
    return Decision(save=save, stop_requested=stop_requested, stop_signal=stop_signal,
                    skip_ranges_changed=skip_changed, sync_layernorm=sync)


def take_sync_request(state: ControlState) -> str:
    """Rank 0 consumes the sync request once done; returns what the file said (e.g. the watchdog's event id)."""
    path = state.control_dir / SYNC_LAYERNORM
    try:
        text = _read_small(path)
    except (OSError, ValueError, UnicodeDecodeError):
        text = ""
    path.unlink(missing_ok=True)
    return text.strip()[:1000]


def acknowledge_save(state: ControlState) -> None:
    """Rank 0 removes the save switch once the checkpoint is published."""
    (state.control_dir / SAVE_SWITCH).unlink(missing_ok=True)
