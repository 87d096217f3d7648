"""How run-directory files are written: folder modes, atomic replaces, single-write JSONL appends.

Every writer of the run directory (trainer, launcher, CLI, watchdog) goes through these, so that a reader
never sees half a file or half a record, and a power loss never reverts a rename."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable


DIR_MODE = 0o750
"""Run-directory folders: the owner writes (trainer, watchdog, control files); the project group may read
(status, dashboards, on call on a shared cluster filesystem); others get nothing. Files are 0640 (run.toml,
``latest`` and the other atomic writes 0600, from mkstemp)."""
FILE_MODE = 0o640


def make_dir(path: Path, mode: int = DIR_MODE, tighten: bool = False) -> Path:
    """Create ``path`` (and missing parents) with ``mode``. ``tighten``: an existing folder of ours that
    others may enter or the group may write loses those bits (only for run folders: never a shared parent
    such as /tmp). Symlinks are not followed for the chmod."""
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=mode)
        except FileExistsError:
            pass
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    import stat
    if tighten and stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & ~mode & 0o027:
        os.chmod(path, stat.S_IMODE(st.st_mode) & mode)
    return path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (the rename itself lives in the folder's data)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(handle)`` on a temp file in ``path``'s directory, fsync, rename it to ``path``, then fsync
    the directory: readers see the old file or the whole new one, never a part, and after a power loss the
    new one is still there (a replaced ``checkpoints/latest`` would otherwise revert to the old tag)."""
    make_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda handle: handle.write(text.encode()))


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line with a single write (readers never see half a record from us)."""
    make_dir(path.parent)
    line = json.dumps(record, separators=(",", ":"), allow_nan=True) + "\n"
    with open(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE), "a") as handle:
        handle.write(line)
        handle.flush()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All complete records of a JSONL file (a torn last line is ignored)."""
    records = []
    try:
        with open(path) as handle:
            for line in handle:
                if line.endswith("\n"):
                    records.append(json.loads(line))
    except FileNotFoundError:
        pass
    return records
