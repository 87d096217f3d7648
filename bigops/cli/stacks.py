"""``bigops stacks RUN``: the Python stacks of the run's live ranks now (py-spy), kept in
``RUN/watchdog/stacks/`` and summarised: which ranks stand in the same frames, which one differs.

A run launched with ``--slurm`` whose job is running is dumped on every node of that job (``srun --overlap``,
through the chain's runner: here or over SSH); otherwise the ranks on this host are."""

from __future__ import annotations

import typer

from bigops.cli.options import RunDirArg, existing_run


def stacks(run_dir: RunDirArg) -> None:
    """Dump the stacks of every live rank of RUN with py-spy (a hung rank too; on SLURM on every node of the
    running job), group them."""
    import socket

    from bigops.errors import BigopsError
    from bigops.watchdog import stacks as lib

    run = existing_run(run_dir)
    dumps = lib.dump_slurm_job(run) if run.chain_record.exists() else None
    if dumps is None:
        host = socket.gethostname()
        pids = lib.live_pids(run, host)
        if not pids:
            raise BigopsError(f"{run.root}: no live rank on {host} (their heartbeats name none)"
                              + ("; no job of its SLURM chain is running" if run.chain_record.exists() else ""))
        dumps = lib.dump_local(pids)
    folder, groups = lib.write_dumps(run, dumps, "on-demand")
    for g in groups:
        typer.echo(f"ranks {', '.join(map(str, g.ranks))}: {g.where}")
        for name, filename, line in g.frames[:12]:
            typer.echo(f"    {name} ({filename}:{line})")
    typer.echo(lib.summary_line(groups, folder))
