"""Start a run's ranks on this machine (``launcher.ranks``: warm spares or cold ones, torchrun's environment),
gloo on CPU.

Commands are argument lists (never a shell string) and the environment sets
``OMP_NUM_THREADS`` to share this machine's cores between ranks: without it, 4 ranks on 2 cores ran 5x
slower (../shared/FACTS.md). The ranks' guardian is the launching process (``trainer.lifeline``): a
``bigops launch`` killed by any signal takes its ranks with it. SLURM jobs have none (srun owns the ranks).

A local launch is :func:`prepare_launch` (resume rules, run.toml, data) then :func:`run_ranks`; ``bigops launch
--watch`` runs the ranks under :func:`bigops.watchdog.supervisor.supervise_local` instead.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

from launcher import plan as plan_mod
from launcher.plan import LaunchPlan
from trainer.rundir import RUN_FOLDERS
from trainer.startup import LAUNCH_TIME_ENV


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (for the rendezvous of one local run)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def rank_command(run_dir: str | Path, nproc: int, master_port: int, trainer_args: list[str] = ()) -> list[str]:
    """torchrun's command line for ``nproc`` ranks of ``trainer.train`` on this host (the launches here start
    spares instead, ``launcher.ranks``; this serves the tests and benchmarks that run torchrun as a peer)."""
    return [
        sys.executable, "-m", "torch.distributed.run",
        f"--nproc-per-node={nproc}", "--nnodes=1", "--node-rank=0",
        "--master-addr=127.0.0.1", f"--master-port={master_port}",
        "-m", "trainer.train", "--run-dir", str(run_dir), *trainer_args,
    ]


def rank_env(nproc: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The ranks' environment: OMP threads split over the cores, CPU accelerator when there is no GPU."""
    env = dict(os.environ if base is None else base)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc)))
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    try:
        import torch
        if not torch.cuda.is_available():
            env.setdefault("DS_ACCELERATOR", "cpu")
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return env




def secure_run_dir(run_dir: str | Path) -> None:
    """Create or tighten the run folder and its steering folders to 0750 (owner's folders only)."""
    from trainer.rundir import make_dir
    for name in RUN_FOLDERS:
        make_dir(Path(run_dir) / name, tighten=True)


def spawn(run_dir: str | Path, nproc: int, trainer_args: list[str] = (), log_path: Path | None = None,
          master_port: int | None = None, launch_id: str | None = None, pool=None):
    """Start the ranks (``launcher.ranks``: warm spares from ``pool`` where it has them, cold ones otherwise)
    in one process group (so the whole run can be signalled at once), with this process as their guardian:
    they stop (saving at the next step, see ``trainer.lifeline``) when it is gone, however it dies.
    ``launch_id`` names this start of the ranks (the supervisor's; default: a new one); the returned
    :class:`launcher.ranks.RankGroup` carries it as ``launch_id`` and the ranks' heartbeats as ``launch``.

    The run folder and the ones the ranks and the watchdog steer through are made 0750 first (see
    ``trainer.rundir.DIR_MODE``): nobody outside the owner's group reads checkpoints or telemetry, and only
    the owner writes control files; the rank log is 0640."""
    from launcher import ranks
    from trainer.lifeline import guardian_env
    secure_run_dir(run_dir)
    launch_id = launch_id or uuid.uuid4().hex[:12]
    env = {**rank_env(nproc), **guardian_env(launch_id), LAUNCH_TIME_ENV: repr(time.time())}
    return ranks.launch(run_dir, nproc, ["--run-dir", str(run_dir), *trainer_args], env, launch_id,
                        master_port or free_port(), log_path=log_path, pool=pool)


def prepare(run, cfg) -> dict | None:
    """Make the run directory (0750: the project group reads, only the owner writes), write its run.toml,
    and tokenize the corpus once, here, before the ranks start (they only memory-map it). Returns the data's
    metadata when it was prepared now (None: already there, or synthetic). A corpus that cannot be read is a
    ConfigError."""
    from trainer import config as config_mod
    from trainer.data.dataset import DataError
    from trainer.data.source import prepare_data
    from trainer.rundir import atomic_write_text, make_dir
    make_dir(run.root, tighten=True)
    make_dir(run.logs, tighten=True)
    atomic_write_text(run.run_toml, config_mod.dumps_toml(cfg))
    try:
        return prepare_data(run, cfg)
    except DataError as exc:
        raise config_mod.ConfigError(str(exc)) from None


def stop(proc, grace_s: float = 60.0) -> None:
    """Stop the ranks (Ctrl-C): SIGTERM to all of them (they save and exit); SIGKILL if they have not within
    ``grace_s``."""
    import signal

    from launcher.ranks import signal_launch
    signal_launch(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        signal_launch(proc, signal.SIGKILL)
        proc.wait()


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A local launch ready to start: its plan, world size and rank arguments, the data prepared now (with
    the seconds it took; ``None``: already there or synthetic), and how many step records the run had before
    (the progress and the summary show only this launch's)."""

    plan: LaunchPlan
    world: int
    trainer_args: list[str]
    data: dict | None
    data_s: float
    done_before: int


def prepare_launch(run, preset: str, config_file: Path | None, overrides: list[str], init_hf: Path | None = None,
                   resume: bool | None = None, init_megatron: Path | None = None) -> Prepared:
    """Everything a local launch does before the ranks start: apply the resume rules
    (:func:`launcher.plan.launch_plan`), write run.toml and tokenize the data (:func:`prepare`), and clear the
    previous launch's exit record so the one read at the end is this launch's."""
    from trainer import config as config_mod
    from trainer.rundir import read_jsonl
    launch_plan = plan_mod.launch_plan(run, preset, config_file, overrides, init_hf=init_hf, resume=resume,
                                       init_megatron=init_megatron)
    started = time.perf_counter()
    data = prepare(run, launch_plan.cfg)
    data_s = time.perf_counter() - started
    trainer_args = ["--init-hf", str(init_hf)] if init_hf is not None else []
    if init_megatron is not None:
        trainer_args += ["--init-megatron", str(Path(init_megatron).resolve())]
    done_before = len(read_jsonl(run.metrics))
    run.exit_record.unlink(missing_ok=True)
    return Prepared(launch_plan, config_mod.world_size_of(launch_plan.cfg), trainer_args, data, data_s, done_before)


def run_ranks(run, prepared: Prepared, follow: Callable[[subprocess.Popen], None]) -> tuple[int, str]:
    """Start the ranks, hand them to ``follow`` (which returns when they have exited; the CLI shows progress
    there) and return their exit code and its description. Ctrl-C stops them (they save first)."""
    from trainer import exitcodes
    proc = spawn(run.root, prepared.world, prepared.trainer_args, log_path=run.ranks_log)
    try:
        follow(proc)
    except KeyboardInterrupt:
        stop(proc)
        raise
    return exitcodes.read(run.exit_record, proc.returncode)
