"""Errors the CLI turns into one line and an exit code (see ``bigops.exitcodes``)."""

from __future__ import annotations

from trainer.config import ConfigError  # noqa: F401  (re-exported: one error type per user mistake)
from trainer.hf import HFCheckpointError  # noqa: F401


class BigopsError(Exception):
    """A known failure with a message fit for one line; ``exit_code`` says which kind."""

    exit_code = 1


class CheckpointError(BigopsError):
    """A checkpoint that is missing, partial or unreadable."""

    exit_code = 3


class OutputExistsError(BigopsError):
    """A destination that already exists: bigops never overwrites it."""

    exit_code = 4
