"""Every path of a run directory (README "The run directory", ../shared/DESIGN.md), named once.

``RunDir(root).<name>`` is the only spelling of a run-directory path in the project: the trainer writes
them, the launcher creates them, the CLI and the watchdog read them. The file names are module constants
too, for the few places that need a bare name (a glob, a remote path, a shell script's ``$RUN_DIR``).
A path on another host or in a script works the same: ``RunDir("$RUN_DIR").metrics``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RUN_TOML = "run.toml"
EVENTS = "events.jsonl"
DATA = "data"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
MANIFEST = "manifest.json"
VERIFIED = "verified.json"
"""``checkpoints/<tag>/verified.json``: the verified stamp (``trainer.verified``), written after the publish,
never listed in the manifest."""
PARTIAL_PREFIX = ".partial-"
"""``checkpoints/.partial-<tag>/``: a checkpoint being written (renamed to ``<tag>`` once complete)."""
ROLLED_BACK = ".rolled-back"
"""``checkpoints/.rolled-back/<event>/``: checkpoints a rollback set aside (never deleted)."""
TELEMETRY = "telemetry"
METRICS = "metrics.jsonl"
HEARTBEAT = "heartbeat"
HEARTBEAT_GLOB = "rank-*.json"
CHECKPOINT_LOG = "checkpoints.jsonl"
EXIT_RECORD = "exit.json"
STARTUP_LOG = "startup.jsonl"
GPU = "gpu"
TENSORBOARD = "tensorboard"
LOGS = "logs"
RANKS_LOG = "ranks.log"
CONTROL = "control"
KILL_SWITCH = "kill-switch"
SAVE_SWITCH = "save-switch"
SKIP_RANGES = "skip-ranges"
SYNC_LAYERNORM = "sync-layernorm"
WATCHDOG = "watchdog"
WATCHDOG_STATE = "state.json"
SUPERVISOR = "supervisor.json"
SPARES = "spares.json"
INTENTS = "intents"
APPROVALS = "approvals"
OUTBOX = "outbox"
STACKS = "stacks"
STACK_DUMP = "rank-{rank}.json"
STACK_SUMMARY = "summary.json"
WRITER_LOCK = "writer.lock"
WRITER_LEASE = "writer.json"
SLURM = "slurm"
CHAIN_RECORD = "chain.json"
SLURM_JOBS = "jobs"
SLURM_SCRIPT = "job.sbatch"
DATA_META = "meta.json"
TOKENIZER = "tokenizer.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
"""Beside the run's tokenizer: the roles (BOS/EOS/PAD/UNK) its source folder declared (trainer/hf_tokenizer.py)."""

RUN_FOLDERS = ("", CONTROL, CHECKPOINTS, TELEMETRY, LOGS, WATCHDOG)
"""The folders a run is created with (and tightened to 0750): the root and the steering folders."""


def tokens_name(split: str) -> str:
    """The token-id file of a data split (``train`` or ``valid``) inside ``data/``."""
    return f"{split}.bin"


def safe_host(host: str) -> str:
    """``host`` as a file name: letters, digits and ``-_.`` kept, anything else ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in host) or "host"


@dataclass(frozen=True)
class RunDir:
    """A run directory: each property is one path of the contract (nothing is created or read here)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # ---------------------------------------------------------------------------------- config and data

    @property
    def run_toml(self) -> Path:
        """The resolved run config (:func:`trainer.rundir.load_run_config` reads it)."""
        return self.root / RUN_TOML

    def run_toml_before(self, tag: str) -> Path:
        """The run.toml an LR surgery replaced, kept beside it (never the only copy)."""
        return self.root / f"{RUN_TOML}.before-{tag}"

    @property
    def data(self) -> Path:
        """tokenizer.json, train.bin / valid.bin (memory-mapped token ids), meta.json; ``shuffle-*.npy``: a large
        dataset's epoch order, shared by the ranks (trainer/data/shuffle.py)."""
        return self.root / DATA

    @property
    def data_meta(self) -> Path:
        return self.data / DATA_META

    @property
    def tokenizer(self) -> Path:
        return self.data / TOKENIZER

    def tokens(self, split: str) -> Path:
        """``train`` or ``valid``: the split's token ids."""
        return self.data / tokens_name(split)

    # ------------------------------------------------------------------------------------------ checkpoints

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def latest(self) -> Path:
        """Text: the newest complete checkpoint's tag, replaced atomically after the rename."""
        return self.checkpoints / LATEST

    def checkpoint(self, tag: str) -> Path:
        return self.checkpoints / tag

    def manifest(self, tag: str) -> Path:
        """Size and sha256 of every file of checkpoint ``tag``, written last."""
        return self.checkpoint(tag) / MANIFEST

    def partial(self, tag: str) -> Path:
        return self.checkpoints / f"{PARTIAL_PREFIX}{tag}"

    @property
    def rolled_back(self) -> Path:
        return self.checkpoints / ROLLED_BACK

    def latest_tag(self) -> str | None:
        """The tag ``checkpoints/latest`` names, or None when there is no checkpoint yet."""
        try:
            tag = self.latest.read_text(errors="replace").strip()  # a corrupt file is caught by its readers
        except FileNotFoundError:
            return None
        return tag or None

    # -------------------------------------------------------------------------------------------- telemetry

    @property
    def telemetry(self) -> Path:
        return self.root / TELEMETRY

    @property
    def metrics(self) -> Path:
        """One JSON record per optimizer step (rank 0)."""
        return self.telemetry / METRICS

    @property
    def heartbeats(self) -> Path:
        """The folder of the ranks' heartbeat files (see :meth:`heartbeat`)."""
        return self.telemetry / HEARTBEAT

    def heartbeat(self, rank: int) -> Path:
        """Rank ``rank``'s heartbeat, replaced atomically every step."""
        return self.heartbeats / f"rank-{rank:05d}.json"

    @property
    def checkpoint_log(self) -> Path:
        """Every save and load: tag, step, seconds, bytes."""
        return self.telemetry / CHECKPOINT_LOG

    @property
    def startup_log(self) -> Path:
        """One record per launch: where its start-up seconds went, phase by phase (``trainer.startup``)."""
        return self.telemetry / STARTUP_LOG

    @property
    def exit_record(self) -> Path:
        """How the ranks last exited: code, reason, message."""
        return self.telemetry / EXIT_RECORD

    @property
    def gpu_samples(self) -> Path:
        """The folder of the GPU health sample files, one per host (see :meth:`gpu_log`)."""
        return self.telemetry / GPU

    def gpu_log(self, host: str) -> Path:
        return self.gpu_samples / f"{safe_host(host)}.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD

    @property
    def logs(self) -> Path:
        return self.root / LOGS

    @property
    def slurm_output(self) -> Path:
        """Each SLURM job's output (``%j``: sbatch puts the job id there)."""
        return self.logs / "slurm-%j.out"

    @property
    def ranks_log(self) -> Path:
        """The ranks' output (a local launch)."""
        return self.logs / RANKS_LOG

    # ---------------------------------------------------------------------------------------------- control

    @property
    def control(self) -> Path:
        """Files the trainer polls every step (``trainer.control``)."""
        return self.root / CONTROL

    @property
    def kill_switch(self) -> Path:
        return self.control / KILL_SWITCH

    @property
    def save_switch(self) -> Path:
        return self.control / SAVE_SWITCH

    @property
    def skip_ranges(self) -> Path:
        return self.control / SKIP_RANGES

    @property
    def sync_layernorm(self) -> Path:
        return self.control / SYNC_LAYERNORM

    # --------------------------------------------------------------------------------------------- watchdog

    @property
    def events(self) -> Path:
        """The watchdog's append-only audit log (:func:`trainer.rundir.append_event`)."""
        return self.root / EVENTS

    @property
    def watchdog(self) -> Path:
        return self.root / WATCHDOG

    @property
    def watchdog_state(self) -> Path:
        """The one writer's incidents, detector streams, restart budget and handled actions."""
        return self.watchdog / WATCHDOG_STATE

    @property
    def supervisor(self) -> Path:
        """Written by ``bigops launch --watch`` while it owns the ranks: {"pid", "host", "started"}."""
        return self.watchdog / SUPERVISOR

    @property
    def spares(self) -> Path:
        """The supervisor's warm spare ranks (``launcher.ranks.SparePool``): {"wanted", "warm", "pids", "time"}."""
        return self.watchdog / SPARES

    @property
    def intents(self) -> Path:
        """The executor's journal of actions begun (``done/`` once finished)."""
        return self.watchdog / INTENTS

    @property
    def approvals(self) -> Path:
        """Decisions on pending actions, one file each (``bigops approve``)."""
        return self.watchdog / APPROVALS

    @property
    def outbox(self) -> Path:
        """Pages kept until delivered."""
        return self.watchdog / OUTBOX

    @property
    def stacks(self) -> Path:
        """Python stacks of the ranks (py-spy), one folder per dump: the evidence of a hang, kept."""
        return self.watchdog / STACKS

    @property
    def writer_lock(self) -> Path:
        return self.watchdog / WRITER_LOCK

    @property
    def writer_lease(self) -> Path:
        return self.watchdog / WRITER_LEASE

    # ------------------------------------------------------------------------------------------------ slurm

    @property
    def slurm(self) -> Path:
        return self.root / SLURM

    @property
    def chain_record(self) -> Path:
        """The SLURM job chain and what the watchdog's keeper remembers of it."""
        return self.slurm / CHAIN_RECORD

    @property
    def slurm_jobs(self) -> Path:
        """One record per SLURM job that ran (``launcher.slurm.job``)."""
        return self.slurm / SLURM_JOBS

    def slurm_job(self, job_id: str) -> Path:
        return self.slurm_jobs / f"{job_id}.json"

    @property
    def slurm_script(self) -> Path:
        return self.slurm / SLURM_SCRIPT


RELATIVE = RunDir(Path())
"""The contract's paths relative to the run directory (``RELATIVE.chain_record``: ``slurm/chain.json``), for
messages and help texts that name a file for people."""
