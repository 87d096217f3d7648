"""The run-directory contract (README "The run directory", ../shared/DESIGN.md): every path, how files are
written, the tolerant readers, the audit log and run.toml, in one package that everything imports.

The trainer writes, the launcher creates, the CLI and the watchdog read and steer; none of them spells a
run-directory path of its own (``tests/unit/test_layers.py`` checks it). It lives in ``trainer`` because the
trainer must not import ``bigops`` or ``launcher``.

- ``paths``: ``RunDir`` (one property per path) and the file names.
- ``files``: folder modes, atomic replaces, JSONL appends.
- ``jsonl``: reading JSONL safely (tails, appended bytes, type-checked fields).
- ``readers``: heartbeats, the exit record, the supervisor file, checkpoint facts.
- ``events``: ``append_event`` to events.jsonl.
- ``run_config``: ``load_run_config`` / ``read_run_config`` for run.toml.
"""

# The package's API, re-exported: callers import from ``trainer.rundir``.
from trainer.rundir.events import append_event
from trainer.rundir.files import (DIR_MODE, FILE_MODE, append_jsonl, atomic_write, atomic_write_text,
                                  fsync_dir, make_dir, read_jsonl)
from trainer.rundir.jsonl import (GPU_FIELDS, HEARTBEAT_FIELDS, MAX_LINE_BYTES, MAX_PASS_BYTES, number,
                                  parse_lines, read_appended, read_tail, read_tail_at, typed)
from trainer.rundir.paths import (RUN_TOML, EVENTS, DATA, CHECKPOINTS, LATEST, MANIFEST, VERIFIED,
                                  PARTIAL_PREFIX, ROLLED_BACK, TELEMETRY, METRICS, HEARTBEAT, HEARTBEAT_GLOB,
                                  CHECKPOINT_LOG, EXIT_RECORD, STARTUP_LOG, GPU, TENSORBOARD, LOGS, RANKS_LOG, CONTROL,
                                  KILL_SWITCH,
                                  SAVE_SWITCH, SKIP_RANGES, SYNC_LAYERNORM, WATCHDOG, WATCHDOG_STATE,
                                  SUPERVISOR, INTENTS, APPROVALS, OUTBOX, STACKS, STACK_DUMP, STACK_SUMMARY,
                                  WRITER_LOCK, WRITER_LEASE, SLURM, CHAIN_RECORD, SLURM_JOBS, SLURM_SCRIPT,
                                  DATA_META, TOKENIZER, SPECIAL_TOKENS_MAP, RUN_FOLDERS, RELATIVE, RunDir, safe_host,
                                  tokens_name)
from trainer.rundir.readers import (last_checkpoint_bytes, latest_checkpoint_facts, pid_alive, read_exit_record,
                                    read_heartbeats, supervised)
from trainer.rundir.run_config import load_run_config, parse_run_config, read_run_config, target_step

__all__ = [
    "append_event", "DIR_MODE", "FILE_MODE", "append_jsonl", "atomic_write", "atomic_write_text", "fsync_dir",
    "make_dir", "read_jsonl", "GPU_FIELDS", "HEARTBEAT_FIELDS", "MAX_LINE_BYTES", "MAX_PASS_BYTES", "number",
    "parse_lines", "read_appended", "read_tail", "read_tail_at", "typed", "RUN_TOML", "EVENTS", "DATA",
    "CHECKPOINTS", "LATEST", "MANIFEST", "VERIFIED", "PARTIAL_PREFIX", "ROLLED_BACK", "TELEMETRY", "METRICS",
    "HEARTBEAT", "HEARTBEAT_GLOB", "CHECKPOINT_LOG", "EXIT_RECORD", "STARTUP_LOG", "GPU", "TENSORBOARD", "LOGS",
    "RANKS_LOG", "CONTROL",
    "KILL_SWITCH", "SAVE_SWITCH", "SKIP_RANGES", "SYNC_LAYERNORM", "WATCHDOG", "WATCHDOG_STATE", "SUPERVISOR",
    "INTENTS", "APPROVALS", "OUTBOX", "WRITER_LOCK", "WRITER_LEASE", "SLURM", "CHAIN_RECORD", "SLURM_JOBS",
    "SLURM_SCRIPT", "DATA_META", "TOKENIZER", "SPECIAL_TOKENS_MAP", "RUN_FOLDERS", "RELATIVE", "RunDir", "safe_host",
    "tokens_name",
    "last_checkpoint_bytes", "latest_checkpoint_facts", "pid_alive", "read_exit_record", "read_heartbeats",
    "supervised", "load_run_config", "parse_run_config", "read_run_config", "target_step",
]
