"""Exit codes of a training run, shared by the trainer, the launcher and the watchdog.

The watchdog and the SLURM chain decide what to do from these alone: continue the chain (a time-out or
signal after a save), stop it (finished, or stopped on request), count a crash, or roll back.
"""

import json
import time
from pathlib import Path

from trainer.rundir import atomic_write_text

FINISHED = 0
"""The run reached its target step and saved its final checkpoint."""
FAILED = 1
"""A crash or unexpected error: count it against the restart budget."""
CONFIG_ERROR = 2
"""The configuration or command line is wrong; restarting will not help."""
CHECKPOINT_ERROR = 3
"""No usable checkpoint to resume from (missing, damaged, or from another topology)."""
STOPPED_ON_REQUEST = 10
"""``control/kill-switch`` was seen: saved and exited. Do not restart automatically."""
STOPPED_BY_SIGNAL = 11
"""SIGUSR1/SIGTERM (e.g. SLURM's pre-timeout signal) or ``--exit-duration-in-mins``: saved and exited.
The next job of the chain resumes."""
NONFINITE_LIMIT = 12
"""Too many consecutive steps with a NaN/Inf loss or grad norm were skipped: roll back past them."""

DESCRIPTIONS = {
    FINISHED: "finished",
    FAILED: "failed",
    CONFIG_ERROR: "configuration error",
    CHECKPOINT_ERROR: "no usable checkpoint",
    STOPPED_ON_REQUEST: "stopped on request (kill switch), after saving",
    STOPPED_BY_SIGNAL: "stopped by signal or time limit, after saving",
    NONFINITE_LIMIT: "too many non-finite steps in a row",
}


def describe(code: int) -> str:
    return DESCRIPTIONS.get(code, f"exit code {code}")


def record(path: Path, code: int, message: str, rank: int) -> None:
    """Write ``telemetry/exit.json``: this exit's code and reason, for the launcher and the watchdog."""
    try:
        atomic_write_text(path, json.dumps({"code": code, "reason": describe(code), "message": message,
                                            "rank": rank, "time": time.time()}) + "\n")
    except OSError:
        pass  # a full disk must not hide the real exit code


def read(path: Path, returncode: int) -> tuple[int, str]:
    """The trainer's own exit code and message: torchrun reports any worker failure as 1, so the record
    wins; without one, the process's return code decides between FINISHED and FAILED."""
    try:
        data = json.loads(path.read_text())
        code = int(data["code"])
        return code, str(data.get("message") or describe(code))
    except (OSError, ValueError, KeyError, TypeError):
        if returncode == 0:
            return FINISHED, describe(FINISHED)
        return FAILED, f"training ranks exited with code {returncode}"
