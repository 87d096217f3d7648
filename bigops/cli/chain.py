"""``bigops chain status|extend|hold|release|cancel|exclude``: the SLURM job chain of a run, here or over SSH.

``bigops launch --slurm`` creates the chain (:func:`launch_slurm`); these commands act on it through the same
runner (local subprocess, or paramiko with ``--host``, or the host recorded in ``RUN/slurm/chain.json``).
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from bigops.errors import BigopsError, ConfigError
from trainer.rundir import RELATIVE, RunDir, parse_run_config

app = typer.Typer(help="The SLURM job chain of a run: status, extend, hold, release, cancel, exclude nodes.",
                  no_args_is_help=True)
console = Console(highlight=False, soft_wrap=True)

HostOpt = Annotated[Optional[str], typer.Option("--host", help="Run SLURM's commands on this login node over SSH: "
                                                "[user@]host[:port] (key auth, known_hosts checked, never added).")]
SSHKeyOpt = Annotated[Optional[str], typer.Option("--ssh-key", help="Private key file for --host.")]
KnownHostsOpt = Annotated[Optional[str], typer.Option("--known-hosts", help="known_hosts file for --host "
                                                      "(default ~/.ssh/known_hosts).")]
ChainRunArg = Annotated[str, typer.Argument(help="The run directory (on the cluster's filesystem with --host).")]
PROFILES = Path(__file__).resolve().parents[2] / "launcher" / "slurm" / "profiles"
REPO = Path(__file__).resolve().parents[2]


class SlurmUnavailable(BigopsError):
    """SLURM or the login node did not answer."""


def _profile_overrides(profile: str) -> list[str]:
    path = Path(profile)
    if not path.suffix and not path.exists():
        path = PROFILES / f"{profile}.toml"
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        names = ", ".join(sorted(p.stem for p in PROFILES.glob("*.toml")))
        raise ConfigError(f"--profile {profile}: no such file or profile (profiles: {names})") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"--profile {profile}: cannot be read: {exc}") from None
    return [f"{section}.{k}={v}" for section, values in data.items() if isinstance(values, dict)
            for k, v in values.items()]


def _runner(host, ssh_key, known_hosts):
    from launcher.remote import runner_for
    try:
        return runner_for(host, ssh_key, known_hosts)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def launch_slurm(run_dir: Path, preset: str, config: Path | None, overrides: list[str], profile: str | None,
                 host: str | None, ssh_key: str | None, known_hosts: str | None, print_script: bool,
                 out: Console) -> None:
    """Resolve the config, write run.toml and the batch script into the run dir, submit the chain."""
    from launcher import plan
    from launcher.slurm import chain as chain_mod
    from launcher.slurm import render
    from launcher.slurm.runner import CommandError
    from trainer import config as config_mod

    if profile:
        overrides = [*_profile_overrides(profile), *overrides]
    run_path = str(run_dir) if host else str(run_dir.resolve())
    runner = _runner(host, ssh_key, known_hosts)
    try:
        stored = None if print_script else runner.read_text(str(RunDir(run_path).run_toml))
        if stored is not None:
            existing = chain_mod.Chain.load(runner, run_path)
            if existing is not None and chain_mod.queue(runner, existing):
                raise ConfigError(f"{run_path} already has jobs queued: use `bigops chain extend` (or cancel first)")
            cfg = plan.resumed_config(parse_run_config(stored, source=str(RunDir(run_path).run_toml)), overrides)
        else:
            draft = config_mod.resolve(preset, config, overrides)
            if draft.parallel.dp is None:  # fill dp from the nodes' GPUs
                overrides = [*overrides, f"parallel.dp={render.world_size(draft) // (draft.parallel.tp * draft.parallel.pp)}"]
            cfg = plan.fresh_config(preset, config, overrides, cuda_available=draft.slurm.gpus_per_node > 0)
        render.ranks_per_node(cfg)  # a layout error is a one-line ConfigError now, not a failed job later
        if cfg.train.exit_duration_in_mins is None:
            cfg.train.exit_duration_in_mins = render.exit_duration_min(cfg.slurm)
        if host and not (cfg.slurm.python and cfg.slurm.workdir):
            raise ConfigError("--host: set slurm.python and slurm.workdir (the interpreter and the bigops checkout "
                              "on the cluster), e.g. --set slurm.workdir=/path/to/bigops")
        cfg.slurm.python = cfg.slurm.python or sys.executable
        cfg.slurm.workdir = cfg.slurm.workdir or str(REPO)
        if print_script:
            name = cfg.slurm.job_name or render.default_job_name(run_path)
            out.print(render.render_script(cfg, run_path, job_name=name, workdir=cfg.slurm.workdir), markup=False)
            import shlex
            argv = render.submit_argv(render.sbatch_options(cfg, run_path, name), str(RunDir(run_path).slurm_script))
            out.print("# submitted as: " + shlex.join(argv), markup=False)
            return
        chain = chain_mod.create(runner, cfg, run_path, cfg.slurm.workdir, config_mod.dumps_toml(cfg), host=host,
                                 key_file=ssh_key, known_hosts=known_hosts)
    except CommandError as exc:
        raise SlurmUnavailable(str(exc)) from None
    finally:
        runner.close()
    world = render.world_size(cfg)
    out.print(f"[bold]bigops launch --slurm[/] {run_path}: chain {chain.name!r} ({chain.mode}) of "
              f"{len(chain.submitted)} job(s) {', '.join(chain.submitted)}; TP {cfg.parallel.tp} x PP {cfg.parallel.pp} "
              f"x DP {cfg.parallel.dp} = {world} ranks on {cfg.slurm.nodes} node(s), {cfg.slurm.time_limit_min} min "
              f"per job, exit after {cfg.train.exit_duration_in_mins} min" + (f" (via {host})" if host else ""))


def _open(run_dir: str, host, ssh_key, known_hosts):
    """The runner and the chain record (the host recorded at launch unless --host is given)."""
    from launcher.slurm import chain as chain_mod
    local = not host
    path = run_dir if host else str(Path(run_dir).resolve())
    record = RunDir(path).chain_record
    if local and record.exists():
        recorded = json.loads(record.read_text())
        if recorded.get("host"):
            host, ssh_key, known_hosts = recorded["host"], ssh_key or recorded.get("key_file"), \
                known_hosts or recorded.get("known_hosts")
    runner = _runner(host, ssh_key, known_hosts)
    chain = chain_mod.Chain.load(runner, path)
    if chain is None:
        runner.close()
        raise ConfigError(f"{path} has no SLURM chain ({RELATIVE.chain_record}): launch it with `bigops launch --slurm`")
    return runner, chain


def _act(run_dir, host, ssh_key, known_hosts, action):
    from launcher.slurm.runner import CommandError
    runner, chain = _open(run_dir, host, ssh_key, known_hosts)
    try:
        return action(runner, chain)
    except CommandError as exc:
        raise SlurmUnavailable(str(exc)) from None
    finally:
        runner.close()


@app.command("status")
def status(run_dir: ChainRunArg, host: HostOpt = None, ssh_key: SSHKeyOpt = None, known_hosts: KnownHostsOpt = None,
           output_format: Annotated[str, typer.Option("--format", help="text or json.")] = "text") -> None:
    """The chain's queued and running jobs (one squeue call), and how each finished job ended."""
    from launcher.slurm import chain as chain_mod

    def look(runner, chain):
        return chain_mod.queue(runner, chain), chain_mod.job_records(runner, chain.run_dir)
    jobs, records = _act(run_dir, host, ssh_key, known_hosts, look)
    if output_format == "json":
        typer.echo(json.dumps({"queued": [j.__dict__ for j in jobs], "finished": records}, default=str))
        return
    if not jobs:
        console.print("[bold red]neither running nor queued[/]")
    for j in jobs:
        console.print(f"{j.job_id:>12}  {j.state:<10} {j.nodes or j.reason}", markup=False)
    for job_id, r in sorted(records.items(), key=lambda kv: kv[1].get("start", 0)):
        if "code" in r:
            console.print(f"{job_id:>12}  ended: {r.get('reason')} (steps {r.get('from_step')} -> {r.get('to_step')})",
                          markup=False)


@app.command("extend")
def extend(run_dir: ChainRunArg, count: Annotated[int, typer.Option("--count", "-n", help="Jobs to add.")] = 1,
           host: HostOpt = None, ssh_key: SSHKeyOpt = None, known_hosts: KnownHostsOpt = None) -> None:
    """Add jobs at the end of the chain."""
    from launcher.slurm import chain as chain_mod
    if count < 1:
        raise ConfigError(f"--count {count}: must be >= 1")

    def add(runner, chain):
        ids = chain_mod.submit(runner, chain, count)
        chain.save(runner)
        return ids
    console.print("submitted " + ", ".join(_act(run_dir, host, ssh_key, known_hosts, add)))


@app.command("hold")
def hold(run_dir: ChainRunArg, host: HostOpt = None, ssh_key: SSHKeyOpt = None,
         known_hosts: KnownHostsOpt = None) -> None:
    """Hold the pending jobs (the running one goes on)."""
    from launcher.slurm import chain as chain_mod
    ids = _act(run_dir, host, ssh_key, known_hosts, chain_mod.hold)
    console.print(f"held {', '.join(ids) or 'nothing (no pending job)'}")


@app.command("release")
def release(run_dir: ChainRunArg, host: HostOpt = None, ssh_key: SSHKeyOpt = None,
            known_hosts: KnownHostsOpt = None) -> None:
    """Release held jobs."""
    from launcher.slurm import chain as chain_mod
    ids = _act(run_dir, host, ssh_key, known_hosts, chain_mod.release)
    console.print(f"released {', '.join(ids) or 'nothing (no pending job)'}")


@app.command("cancel")
def cancel(run_dir: ChainRunArg,
           pending_only: Annotated[bool, typer.Option("--pending-only", help="Keep the running job.")] = False,
           yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
           dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be cancelled.")] = False,
           host: HostOpt = None, ssh_key: SSHKeyOpt = None, known_hosts: KnownHostsOpt = None) -> None:
    """Cancel the chain (the running job gets SIGTERM: it saves and exits)."""
    from launcher.slurm import chain as chain_mod

    def do(runner, chain):
        jobs = [j for j in chain_mod.queue(runner, chain) if j.pending or not pending_only]
        if dry_run or not jobs:
            return [j.job_id for j in jobs], False
        if not yes and not typer.confirm(f"cancel {len(jobs)} job(s) of {chain.name}?"):
            raise typer.Abort()
        return chain_mod.cancel(runner, chain, pending_only), True
    ids, done = _act(run_dir, host, ssh_key, known_hosts, do)
    console.print(("cancelled " if done else "would cancel ") + (", ".join(ids) or "nothing"))


@app.command("exclude")
def exclude(run_dir: ChainRunArg, nodes: Annotated[list[str], typer.Argument(help="Node names to avoid.")],
            host: HostOpt = None, ssh_key: SSHKeyOpt = None, known_hosts: KnownHostsOpt = None) -> None:
    """Never run the chain's next jobs on these nodes (pending jobs are updated)."""
    from launcher.slurm import chain as chain_mod

    def do(runner, chain):
        added = chain_mod.exclude_nodes(runner, chain, nodes)
        chain.save(runner)
        return chain.exclude, added
    now, added = _act(run_dir, host, ssh_key, known_hosts, do)
    console.print(f"excluded {', '.join(now) or 'none'}" + (f" (added {', '.join(added)})" if added else ""))
