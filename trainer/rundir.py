"""The run-directory contract (../shared/DESIGN.md): paths and atomic write helpers, in one module.

The trainer writes, the CLI and (later) the watchdog read; all of them take their paths from here. It lives
in ``trainer`` because the trainer must not import ``bigops``; ``bigops`` re-exports it.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def run_toml(self) -> Path:
        return self.root / "run.toml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def latest(self) -> Path:
        return self.checkpoints / "latest"

    def checkpoint(self, tag: str) -> Path:
        return self.checkpoints / tag

    @property
    def telemetry(self) -> Path:
        return self.root / "telemetry"

    @property
    def metrics(self) -> Path:
        return self.telemetry / "metrics.jsonl"

    @property
    def exit_record(self) -> Path:
        return self.telemetry / "exit.json"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def latest_tag(self) -> str | None:
        """The tag ``checkpoints/latest`` names, or None when there is no checkpoint yet."""
        try:
            tag = self.latest.read_text(errors="replace").strip()  # a corrupt file is caught by its readers
        except FileNotFoundError:
            return None
        return tag or None


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(handle)`` on a temp file in ``path``'s directory, fsync, then rename it to ``path``:
    readers see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
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


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda handle: handle.write(text.encode()))


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line with a single write (readers never see half a record from us)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, separators=(",", ":"), allow_nan=True) + "\n"
    with open(path, "a") as handle:
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
