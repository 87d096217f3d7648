"""``bigops stacks RUN``: the Python stacks of the run's live ranks on this host, now (py-spy), kept in
``RUN/watchdog/stacks/`` and summarised: which ranks stand in the same frames, which one differs."""

from __future__ import annotations

import typer

from bigops.cli.options import RunDirArg, existing_run


def stacks(run_dir: RunDirArg) -> None:
    """Dump the stacks of every live rank of RUN on this host with py-spy (a hung rank too), group them."""
    import socket

    from bigops.errors import BigopsError
    from bigops.watchdog import stacks as lib
    from trainer.rundir import pid_alive, read_heartbeats

    run = existing_run(run_dir)
    host = socket.gethostname()
    pids = {int(b["rank"]): b["pid"] for b in read_heartbeats(run).values()
            if b.get("host") == host and b.get("phase") != "exit" and isinstance(b.get("pid"), int)
            and not isinstance(b.get("pid"), bool) and pid_alive(b["pid"])}
    if not pids:
        raise BigopsError(f"{run.root}: no live rank on {host} (their heartbeats name none)")
    folder, groups = lib.dump_ranks(run, pids, "on-demand")
    for g in groups:
        typer.echo(f"ranks {', '.join(map(str, g.ranks))}: {g.where}")
        for name, filename, line in g.frames[:12]:
            typer.echo(f"    {name} ({filename}:{line})")
    typer.echo(lib.summary_line(groups, folder))
