"""``bigops chain status|extend|hold|release|cancel|exclude``: the SLURM job chain of a run, here or over SSH.

``bigops launch --slurm`` creates the chain (``launcher.slurm.submit``); these commands act on it through the same
runner (local subprocess, or paramiko with ``--host``, or the host recorded in ``RUN/slurm/chain.json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from bigops.cli.options import (DryRunOpt, FormatOpt, HostOpt, KnownHostsOpt, OutputFormat, SSHKeyOpt, YesOpt,
                                 make_app)
from bigops.errors import ConfigError
from trainer.rundir import RELATIVE, RunDir

app = make_app("The SLURM job chain of a run: status, extend, hold, release, cancel, exclude nodes.")
console = Console(highlight=False, soft_wrap=True)

ChainRunArg = Annotated[str, typer.Argument(help="The run directory (on the cluster's filesystem with --host).")]


def _open(run_dir: str, host, ssh_key, known_hosts):
    """The runner and the chain record (the host recorded at launch unless --host is given)."""
    from launcher.slurm import chain as chain_mod
    from launcher.slurm.submit import open_runner
    local = not host
    path = run_dir if host else str(Path(run_dir).resolve())
    record = RunDir(path).chain_record
    if local and record.exists():
        recorded = json.loads(record.read_text())
        if recorded.get("host"):
            host, ssh_key, known_hosts = recorded["host"], ssh_key or recorded.get("key_file"), \
                known_hosts or recorded.get("known_hosts")
    runner = open_runner(host, ssh_key, known_hosts)
    chain = chain_mod.Chain.load(runner, path)
    if chain is None:
        runner.close()
        raise ConfigError(f"{path} has no SLURM chain ({RELATIVE.chain_record}): launch it with `bigops launch --slurm`")
    return runner, chain


def _act(run_dir, host, ssh_key, known_hosts, action):
    """``action(runner, chain)``, the runner closed after it (a CommandError is one line, exit code 1)."""
    runner, chain = _open(run_dir, host, ssh_key, known_hosts)
    try:
        return action(runner, chain)
    finally:
        runner.close()


@app.command("status")
def status(run_dir: ChainRunArg, host: HostOpt = None, ssh_key: SSHKeyOpt = None, known_hosts: KnownHostsOpt = None,
           output_format: FormatOpt = OutputFormat.text) -> None:
    """The chain's queued and running jobs (one squeue call), and how each finished job ended."""
    from launcher.slurm import chain as chain_mod

    def look(runner, chain):
        return chain_mod.queue(runner, chain), chain_mod.job_records(runner, chain.run_dir)
    jobs, records = _act(run_dir, host, ssh_key, known_hosts, look)
    if output_format == OutputFormat.json:
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
           yes: YesOpt = False, dry_run: DryRunOpt = False,
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
