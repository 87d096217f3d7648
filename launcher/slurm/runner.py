"""Run SLURM's commands and touch the run directory here; ``launcher.remote.SSHRunner`` does the same over SSH.

Both take an argument list (never a shell string), count the calls per program (the watchdog reports
sbatch/squeue calls per tick), and give up after ``timeout`` seconds with a :class:`CommandError`.
"""

from __future__ import annotations

import collections
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path


class CommandError(RuntimeError):
    """A command could not be run or did not answer in time (SLURM down, connection lost)."""


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class LocalRunner:
    """Runs commands with :mod:`subprocess` on this machine."""

    host = "localhost"

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()

    def run(self, argv: list[str], timeout: float = 60.0, env: dict[str, str] | None = None) -> Result:
        self.calls[os.path.basename(argv[0])] += 1
        try:
            done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                                  env={**os.environ, **env} if env else None)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CommandError(f"{argv[0]}: {exc}") from None
        return Result(done.returncode, done.stdout, done.stderr)

    def write_text(self, path: str, text: str, mode: int = 0o644) -> None:
        from trainer.rundir import atomic_write_text
        atomic_write_text(Path(path), text)
        os.chmod(path, mode)

    def read_text(self, path: str) -> str | None:
        try:
            return Path(path).read_text()
        except FileNotFoundError:
            return None

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            return []

    def mkdir(self, path: str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        pass
