"""The run-directory contract; defined in ``trainer.rundir`` (the trainer may not import bigops)."""

from trainer.rundir import RunDir, append_jsonl, atomic_write_text, read_jsonl  # noqa: F401
