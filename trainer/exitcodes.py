"""Exit codes of a training run, shared by the trainer, the launcher and the watchdog.

The watchdog and the SLURM chain decide what to do from these alone: continue the chain (a time-out or
signal after a save), stop it (finished, or stopped on request), count a crash, or roll back.
"""

import json
import os
import tempfile
import time
from pathlib import Path


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


def launch_id() -> str:
    """Identifies one start of the ranks (torchrun's rendezvous): ranks of one launch share it."""
    return ":".join(os.environ.get(k, "") for k in ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT",
                                                     "TORCHELASTIC_RESTART_COUNT", "SLURM_JOB_ID"))


def record(path: Path, code: int, message: str, rank: int) -> None:
    """Write ``telemetry/exit.json``: this exit's code and reason, for the launcher and the watchdog.

    The first rank of a launch to record wins: in a crash that is the rank that failed first (the others
    then fail on broken connections, and their later records would hide the cause). A record left by an
    earlier launch is replaced."""
    me = launch_id()
    data = json.dumps({"code": code, "reason": describe(code), "message": message, "rank": rank,
                       "time": time.time(), "launch": me}) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(data)
            try:
                os.link(tmp, path)  # atomic and exclusive: the first writer wins
            except FileExistsError:
                try:
                    earlier = json.loads(path.read_text())
                except (OSError, ValueError):
                    earlier = None
                if not (isinstance(earlier, dict) and earlier.get("launch") == me):
                    os.replace(tmp, path)  # an earlier launch's record
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
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
