"""The errors ``bigops`` turns into one line and an exit code (``bigops.exitcodes`` is the table).

Every domain error of ``bigops`` is a :class:`BigopsError` subclass whose ``exit_code`` is a row of that table.
The trainer's and the launcher's errors (a bad config, an unreadable HF checkpoint, no usable checkpoint,
SLURM not answering) sit below ``bigops`` and may not import it, so they cannot subclass it:
:data:`LOWER_LAYER_ERRORS` gives each its row instead, and :func:`exit_code_of` answers for both. ``bigops.cli.main`` catches :data:`KNOWN_ERRORS` once.
"""

from __future__ import annotations

from bigops import exitcodes
from trainer.checkpoint import CheckpointError as TrainerCheckpointError
from trainer.config import ConfigError  # noqa: F401  (re-exported: one error type per user mistake)
from launcher.slurm.runner import CommandError
from trainer.hf import HFCheckpointError


class BigopsError(Exception):
    """A known failure with a message fit for one line; ``exit_code`` says which kind."""

    exit_code = exitcodes.FAILURE


class InputError(BigopsError):
    """Input files a command cannot use (missing, malformed, or refused by the tokenizer)."""

    exit_code = exitcodes.USAGE


class CheckpointError(BigopsError):
    """A checkpoint that is missing, partial or unreadable."""

    exit_code = exitcodes.CHECKPOINT


class OutputExistsError(BigopsError):
    """A destination that already exists: bigops never overwrites it."""

    exit_code = exitcodes.OUTPUT_EXISTS


class RunInUseError(BigopsError):
    """The run is training (live heartbeats): an offline operation on it must wait until it stopped."""

    exit_code = exitcodes.RUN_IN_USE


class TrainingEnded(BigopsError):
    """The ranks exited with a trainer exit code other than FINISHED (``trainer.exitcodes``): the command
    exits with that code, so a script sees why the run stopped."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


LOWER_LAYER_ERRORS: dict[type[Exception], int] = {
    ConfigError: exitcodes.USAGE,
    HFCheckpointError: exitcodes.USAGE,
    TrainerCheckpointError: exitcodes.CHECKPOINT,
    CommandError: exitcodes.FAILURE,  # SLURM or the login node did not answer (launcher.slurm.runner)
}
"""The errors of the trainer and the launcher (which cannot subclass :class:`BigopsError`: they import
nothing from bigops) and their rows of the table."""

KNOWN_ERRORS: tuple[type[Exception], ...] = (BigopsError, *LOWER_LAYER_ERRORS, OSError)
"""What ``main()`` prints as one line: the domain errors, and an OS error (a full disk, a missing file)."""


def exit_code_of(exc: BaseException) -> int:
    """The exit code for a known error: its own for a :class:`BigopsError`, the table's row for a trainer
    error, FAILURE for anything else (an ``OSError``)."""
    if isinstance(exc, BigopsError):
        return exc.exit_code
    for kind, code in LOWER_LAYER_ERRORS.items():
        if isinstance(exc, kind):
            return code
    return exitcodes.FAILURE
