"""A Jean Zay-style chain of SLURM jobs: N jobs of one name that run one at a time, each resuming from
``checkpoints/latest``; submit, extend, look, hold, release, cancel, exclude nodes.

Chaining: ``--dependency=singleton`` by default (each job is its own submission). Why not an array with
``%1`` (what the BLOOM team ran): a singleton chain is extended by one more sbatch, each job can carry its
own ``--exclude`` (the next job avoids a node found faulty), and a job id is a plain id everywhere. Arrays
are supported (``slurm.chain_mode = "array"``: ``--array=0-N%1``, also under the singleton dependency so that
an extension waits for the array before it).

The chain's record is ``RUN/slurm/chain.json`` (job name, script, options, where SLURM is, what was submitted);
it is read and written through the runner, so all of this works on a login node over SSH.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from launcher.slurm import render
from launcher.slurm.runner import CommandError, Result
from trainer.rundir import RunDir

SQUEUE_FORMAT = "%i|%T|%r|%N|%j"


class SlurmError(CommandError):
    """SLURM refused a command (its stderr is in the message)."""


@dataclass
class Chain:
    run_dir: str
    name: str
    mode: str
    script: str
    options: list[str]
    exclude: list[str] = field(default_factory=list)
    submitted: list[str] = field(default_factory=list)
    host: str | None = None
    key_file: str | None = None
    known_hosts: str | None = None
    keeper: dict = field(default_factory=dict)
    """What the watchdog's chain keeper remembers (jobs classified, back-off, held, done)."""

    @staticmethod
    def path(run_dir: str) -> str:
        return str(RunDir(run_dir).chain_record)

    @classmethod
    def load(cls, runner, run_dir: str) -> "Chain | None":
        text = runner.read_text(cls.path(run_dir))
        if text is None:
            return None
        data = json.loads(text)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def save(self, runner) -> None:
        runner.write_text(self.path(self.run_dir), json.dumps(asdict(self), indent=1, sort_keys=True) + "\n")


@dataclass(frozen=True)
class Job:
    job_id: str
    state: str
    reason: str
    nodes: str

    @property
    def pending(self) -> bool:
        return self.state == "PENDING"

    @property
    def running(self) -> bool:
        return self.state in ("RUNNING", "CONFIGURING", "COMPLETING")


def _check(result: Result, what: str) -> Result:
    if not result.ok:
        raise SlurmError(f"{what} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}")
    return result


def submit(runner, chain: Chain, count: int) -> list[str]:
    """``count`` more jobs at the end of the chain (one sbatch each; one sbatch in array mode)."""
    exclude = ",".join(chain.exclude)
    if chain.mode == "array":
        argv = render.submit_argv(chain.options, chain.script, exclude=exclude, array=f"0-{count - 1}%1")
        job = _check(runner.run(argv), "sbatch").stdout.strip().split(";")[0]
        ids = [f"{job}_{i}" for i in range(count)]
    else:
        ids = []
        for _ in range(count):
            argv = render.submit_argv(chain.options, chain.script, exclude=exclude)
            ids.append(_check(runner.run(argv), "sbatch").stdout.strip().split(";")[0])
    chain.submitted += ids
    return ids


def queue(runner, chain: Chain, timeout: float = 30.0) -> list[Job]:
    """The chain's pending and running jobs: one squeue call for all of them (array tasks expanded)."""
    result = _check(runner.run(["squeue", "--noheader", "--array", f"--name={chain.name}",
                                f"--format={SQUEUE_FORMAT}"], timeout=timeout), "squeue")
    jobs = []
    for line in result.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 4:
            jobs.append(Job(parts[0], parts[1], parts[2], parts[3]))
    return jobs


def _ids(jobs: list[Job], pending_only: bool) -> list[str]:
    return [j.job_id for j in jobs if j.pending or not pending_only]


def hold(runner, chain: Chain) -> list[str]:
    """Hold the pending jobs (the running one goes on)."""
    ids = _ids(queue(runner, chain), pending_only=True)
    if ids:
        _check(runner.run(["scontrol", "hold", ",".join(ids)]), "scontrol hold")
    return ids


def release(runner, chain: Chain) -> list[str]:
    ids = _ids(queue(runner, chain), pending_only=True)
    if ids:
        _check(runner.run(["scontrol", "release", ",".join(ids)]), "scontrol release")
    return ids


def cancel(runner, chain: Chain, pending_only: bool = False) -> list[str]:
    """Cancel the chain's jobs (the running one too, unless ``pending_only``): it saves on SIGTERM first."""
    ids = _ids(queue(runner, chain), pending_only)
    if ids:
        _check(runner.run(["scancel", *ids]), "scancel")
    return ids


USABLE_STATES = frozenset({"idle", "mix", "alloc", "comp", "plnd", "resv", "boot", "pow_up"})
"""``sinfo --format=%t`` states of a node a job can still get (down, drain, fail, maint, ... cannot)."""


def usable_from_sinfo(text: str, exclude: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The usable nodes in ``sinfo --noheader --Node --format=%N|%t`` output: in a usable state, responding
    (no ``*`` suffix), and not excluded by the chain; each node once (it is listed once per partition)."""
    usable = set()
    for line in text.splitlines():
        name, _, state = line.strip().partition("|")
        state = state.strip()
        if not name or state.endswith("*"):
            continue
        if state.rstrip("~#!%$@^-+") in USABLE_STATES and name not in exclude:
            usable.add(name)
    return sorted(usable)


def usable_nodes(runner, chain: Chain, partition: str = "", timeout: float = 30.0) -> tuple[int, list[str]]:
    """(nodes listed, the ones this chain's next job can run on) of ``partition`` (default: SLURM's default)."""
    argv = ["sinfo", "--noheader", "--Node", "--format=%N|%t", *([f"--partition={partition}"] if partition else [])]
    text = _check(runner.run(argv, timeout=timeout), "sinfo").stdout
    listed = len({line.split("|")[0] for line in text.splitlines() if line.strip()})
    return listed, usable_from_sinfo(text, chain.exclude)


def exclude_nodes(runner, chain: Chain, nodes: list[str]) -> list[str]:
    """Never use ``nodes`` again in this chain: the pending jobs are updated, later ones submitted without them."""
    added = [n for n in nodes if n and n not in chain.exclude]
    if not added:
        return []
    chain.exclude += added
    for job in queue(runner, chain):
        if job.pending:
            runner.run(["scontrol", "update", f"JobId={job.job_id}", f"ExcNodeList={','.join(chain.exclude)}"])
    return added


def job_records(runner, run_dir: str) -> dict[str, dict]:
    """What each job wrote about itself (``launcher.slurm.job``), by job id."""
    records = {}
    folder = str(RunDir(run_dir).slurm_jobs)
    for name in runner.listdir(folder):
        if name.endswith(".json"):
            text = runner.read_text(f"{folder}/{name}")
            try:
                record = json.loads(text or "")
            except ValueError:
                continue
            records[str(record.get("job_id", name[:-5]))] = record
    return records


def create(runner, cfg, run_dir: str, workdir: str, run_toml: str, host: str | None = None,
           key_file: str | None = None, known_hosts: str | None = None) -> Chain:
    """Write ``run.toml``, the script and the chain record into the run dir, and submit the first jobs."""
    s = cfg.slurm
    name = s.job_name or render.default_job_name(run_dir)
    script = render.render_script(cfg, run_dir, job_name=name, workdir=workdir)
    options = render.sbatch_options(cfg, run_dir, name)
    run = RunDir(run_dir)
    for folder in (run.root, run.slurm_jobs, run.logs):
        runner.mkdir(str(folder))
    runner.write_text(str(run.run_toml), run_toml)
    script_path = str(run.slurm_script)
    runner.write_text(script_path, script, mode=0o755)
    previous = Chain.load(runner, run_dir)
    chain = Chain(run_dir=run_dir, name=name, mode=s.chain_mode, script=script_path, options=options,
                  exclude=[n for n in s.exclude.split(",") if n], host=host, key_file=key_file,
                  known_hosts=known_hosts, submitted=previous.submitted if previous else [])
    chain.save(runner)  # before sbatch: a job that starts at once finds its chain
    submit(runner, chain, s.chain_jobs)
    chain.save(runner)
    return chain
