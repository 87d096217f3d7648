"""Steering a running job: control files, signals and a time budget, decided together on every step.

Every rank polls what it can see (rank 0: the ``control/`` files and the clock; every rank: the signals it
received); one all-reduce (MAX) of a few flags makes every rank act on the same step. Skip ranges are read
by rank 0 when the file changes and broadcast to all.

- ``control/kill-switch``: save, then exit with STOPPED_ON_REQUEST (the file stays: a restarted job stops
  again until someone removes it, exactly BLOOM's kill switch).
- ``control/save-switch``: save, remove the file, go on.
- ``control/sync-layernorm``: average the TP-duplicated parameters (and their fp32 masters and Adam moments)
  over each TP group, in place, then remove the file (live surgery; the watchdog writes it on TP desync).
- ``control/skip-ranges``: sample ranges to skip after a loss-spike rollback (format below).
- SIGUSR1 / SIGTERM and ``train.exit_duration_in_mins``: save, then exit with STOPPED_BY_SIGNAL.

The skip-ranges file has ONE written format, the human one: a range per line, ``START-END`` in samples,
end exclusive, optionally followed by ``# note`` (who added it and why); ``#`` lines are comments::

    # sample ranges the trainer skips (START-END, end exclusive); see trainer/control.py
    6800-7600  # rollback 3f2a... to global_step100 (loss spike at step 112)

Every writer goes through :func:`add_skip_range` (the watchdog's rollback, ``bigops surgery --skip-range``):
it merges under a lock and replaces the file atomically, keeping every existing line and note; a legacy
JSON list of pairs (``[[start, end], ...]``) is still read, and rewritten as lines on the next merge. A
file that does not parse is never taken as "no ranges": the trainer refuses to start with a one-line
error (exit CONFIG_ERROR), and if it turns unparsable mid-run the ranks save and stop with that error.
The ranges applied are also stored in each checkpoint's manifest (``skip_ranges``): a resume applies the
union of the checkpoint's and the file's (see trainer/checkpoint.py).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainer.rundir import KILL_SWITCH, SAVE_SWITCH, SKIP_RANGES, SYNC_LAYERNORM, RunDir  # noqa: F401

MAX_CONTROL_FILE_BYTES = 1 << 20  # a hostile or runaway file is refused, not read into memory
SKIP_RANGES_HEADER = "# sample ranges the trainer skips (START-END, end exclusive); see trainer/control.py\n"


@dataclass(frozen=True)
class Decision:
    save: bool = False
    stop_requested: bool = False  # kill switch
    stop_signal: bool = False  # signal or time budget
    skip_ranges_changed: bool = False
    sync_layernorm: bool = False
    skip_ranges_error: str | None = None
    """The skip-ranges file no longer parses (one line): save and stop, never train on without its ranges."""

    @property
    def stop(self) -> bool:
        return self.stop_requested or self.stop_signal


def _int_bound(value) -> int:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, str):
        value = value.strip()
        if not value.isdigit():  # no sign, no spaces inside, no 1e3, no 0x10
            raise ValueError
    number = int(value)
    if number != value and not isinstance(value, str):  # 1.5 in a JSON list
        raise ValueError
    if number >= 1 << 63:
        raise ValueError
    return number


def parse_skip_entries(text: str) -> list[tuple[int, int, str]]:
    """The (start, end, note) of every range in a skip-ranges file, in file order, unmerged.

    ``START-END  # note`` lines (``#`` comment lines allowed), or a legacy JSON list of pairs (note "").
    Raises ValueError with a one-line reason on anything else.
    """
    stripped = text.strip()
    if not stripped:
        return []
    raw: list[tuple[object, object, str, str]] = []  # start, end, note, where
    if stripped.startswith("["):
        try:
            items = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ValueError(f"a JSON skip-ranges file must be a list of [start, end] pairs ({exc.msg}, "
                             f"line {exc.lineno}); lines START-END are the format to write") from None
        if not isinstance(items, list) or not all(isinstance(p, list) and len(p) == 2 for p in items):
            raise ValueError("a JSON skip-ranges file must be a list of [start, end] pairs")
        raw = [(p[0], p[1], "", f"pair {i}") for i, p in enumerate(items, 1)]
    else:
        for number, line in enumerate(stripped.splitlines(), 1):
            body, _, note = line.partition("#")
            body = body.strip()
            if not body:
                continue
            start, sep, end = body.partition("-")
            if not sep:
                raise ValueError(f"line {number}: expected START-END, got {body[:80]!r}")
            raw.append((start, end, note.strip(), f"line {number}"))
    entries = []
    for start, end, note, where in raw:
        try:
            start, end = _int_bound(start), _int_bound(end)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{where}: range {str(start)[:40]}-{str(end)[:40]}: bounds must be integers") from None
        if start < 0 or end <= start:
            raise ValueError(f"{where}: range {start}-{end}: need 0 <= start < end")
        entries.append((start, end, note))
    return entries


def merge_ranges(ranges) -> list[tuple[int, int]]:
    """Sorted, merged (overlapping or touching ranges joined) copies of ``(start, end)`` pairs."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted((int(a), int(b)) for a, b in ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def parse_skip_ranges(text: str) -> list[tuple[int, int]]:
    """A skip-ranges file's text -> sorted, merged ranges (ValueError with a one-line reason if unparsable)."""
    return merge_ranges((start, end) for start, end, _ in parse_skip_entries(text))


def covered(ranges: list[tuple[int, int]], start: int, end: int) -> bool:
    """Whether [start, end) lies inside the union of ``ranges`` (merged ones)."""
    return any(a <= start and end <= b for a, b in merge_ranges(ranges))


def skip_ranges_path(run_root: Path) -> Path:
    return RunDir(run_root).skip_ranges


def read_skip_ranges(run_root: Path) -> list[tuple[int, int]]:
    """The merged ranges of ``RUN/control/skip-ranges`` ([] when there is no file).

    Raises ValueError with a one-line reason naming the file when it cannot be read or parsed.
    """
    path = skip_ranges_path(run_root)
    try:
        return parse_skip_ranges(_read_small(path))
    except FileNotFoundError:
        return []
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
        raise ValueError(f"{path}: {reason}") from None


def add_skip_range(run_root: Path, start: int, end: int, note: str = "") -> bool:
    """Merge [start, end) into ``RUN/control/skip-ranges``: True when added, False when already covered.

    Under an exclusive lock (``control/.skip-ranges.lock``, so two writers never lose each other's range),
    the file is read, and replaced atomically (temp file, fsync, rename, fsync of the folder) by the same
    lines plus ``START-END  # note``. Existing lines, notes and comments are kept as they were; a legacy JSON
    list is rewritten as lines. Idempotent: a range already covered by the file changes nothing.
    Raises ValueError (one line) for a bad range or an existing file that does not parse (never dropped).
    """
    from trainer.rundir import atomic_write_text, make_dir

    start, end = _int_bound(start), _int_bound(end)
    if start < 0 or end <= start:
        raise ValueError(f"skip range {start}-{end}: need 0 <= start < end")
    note = " ".join(str(note).replace("#", " ").split())[:500]  # one line, no nested comment marker
    path = skip_ranges_path(run_root)
    make_dir(path.parent)
    lock_fd = os.open(path.parent / f".{SKIP_RANGES}.lock", os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        try:
            text = _read_small(path)
        except FileNotFoundError:
            text = ""
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: {exc}; not adding {start}-{end} (fix the file first)") from None
        try:
            entries = parse_skip_entries(text)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}; not adding {start}-{end} (fix the file first)") from None
        if covered([(a, b) for a, b, _ in entries], start, end):
            return False
        if text.strip().startswith("["):  # legacy JSON: rewrite as lines, keeping every pair
            text = SKIP_RANGES_HEADER + "".join(f"{a}-{b}  # from the JSON list\n" for a, b, _ in entries)
        elif not text.strip():
            text = SKIP_RANGES_HEADER
        elif not text.endswith("\n"):
            text += "\n"
        text += f"{start}-{end}" + (f"  # {note}" if note else "") + "\n"
        atomic_write_text(path, text)
        return True
    finally:
        os.close(lock_fd)  # releases the lock


@dataclass
class ControlState:
    """What the poller remembers between steps (on every rank; file fields used on rank 0)."""

    control_dir: Path
    started: float = field(default_factory=time.monotonic)
    exit_duration_s: float | None = None
    signal_received: int | None = None
    skip_ranges: list[tuple[int, int]] = field(default_factory=list)
    """The ranges applied: the file's, united with ``inherited``."""
    inherited: list[tuple[int, int]] = field(default_factory=list)
    """Ranges the resumed checkpoint applied: kept even if the file loses them (see :func:`start_skip_ranges`)."""
    skip_error: str | None = None
    _skip_seen: tuple | None = None

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


def _signature(path: Path) -> tuple | None:
    """What changes whenever the file is replaced or edited (an atomic replace is a new inode)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size, info.st_mode)


def start_skip_ranges(state: ControlState, run_root: Path, inherited=(), source: str = "") -> list[tuple[int, int]]:
    """Rank 0, before the first step: the ranges to apply = the file's united with ``inherited`` (those of
    the checkpoint resumed from, ``source``). Inherited ranges the file lacks (lost or edited) are written
    back to it with a note. Raises ValueError (one line) when the file does not parse: the caller refuses
    to train."""
    path = skip_ranges_path(run_root)
    seen = _signature(path)
    try:
        from_file = read_skip_ranges(run_root)
    except ValueError as exc:
        raise ValueError(f"{exc}: refusing to train without its skip ranges; fix the file (lines START-END  "
                         f"# note), then start again") from None
    inherited = merge_ranges(inherited)
    for start, end in inherited:
        if not covered(from_file, start, end):
            add_skip_range(run_root, start, end, f"restored from checkpoint {source}" if source else "restored")
            print(f"warning: {path} lacked {start}-{end}, which checkpoint {source} applied: restored",
                  file=sys.stderr, flush=True)
    state._skip_seen = _signature(path) if inherited else seen
    state.inherited = inherited
    state.skip_ranges = merge_ranges(from_file + inherited)
    return state.skip_ranges


def poll_local(state: ControlState, is_rank0: bool) -> list[int]:
    """This rank's flags [save, stop_requested, stop_signal, skip_ranges_changed, sync_layernorm,
    skip_ranges_error]."""
    flags = [0, 0, 1 if state.signal_received is not None else 0, 0, 0, 0]
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
    seen = _signature(path)
    if seen != state._skip_seen or state.skip_error is not None:
        state._skip_seen = seen
        ranges: list[tuple[int, int]] | None
        try:
            ranges = parse_skip_ranges(_read_small(path)) if seen is not None else []
        except FileNotFoundError:  # removed between the stat and the read: as if absent
            ranges = []
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
            state.skip_error = (f"{path}: {reason}: refusing to train on without its skip ranges; fix the file "
                                f"(lines START-END  # note), then resume")
            flags[5] = 1
            ranges = None
        if ranges is not None:
            state.skip_error = None
            ranges = merge_ranges(ranges + list(state.inherited))
            if ranges != state.skip_ranges:
                state.skip_ranges = ranges
                flags[3] = 1
    return flags


def decide(state: ControlState, is_rank0: bool) -> Decision:
    """Poll, then agree with every other rank (one small all-reduce, plus a broadcast on a skip change)."""
    import torch  # here, not at import: the file protocol above is read by bigops tools that load no engine
    import torch.distributed as dist

    flags = torch.tensor(poll_local(state, is_rank0), dtype=torch.int32)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    save, stop_requested, stop_signal, skip_changed, sync, skip_bad = (bool(v) for v in flags.tolist())
    if skip_changed:
        holder = [state.skip_ranges]
        dist.broadcast_object_list(holder, src=0)
        state.skip_ranges = [tuple(r) for r in holder[0]]
    error = None
    if skip_bad:
        holder = [state.skip_error]
        dist.broadcast_object_list(holder, src=0)
        error = str(holder[0])
    return Decision(save=save, stop_requested=stop_requested, stop_signal=stop_signal,
                    skip_ranges_changed=skip_changed, sync_layernorm=sync, skip_ranges_error=error)


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
