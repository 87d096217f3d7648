"""``bigops status``: the state of a run on one screen, problems first (or as JSON for scripts); ``--watch``
refreshes it in place. Read-only: it writes nothing into the run (``bigops.status`` reads and summarises)."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from bigops.cli.options import FormatOpt, OutputFormat, RunDirArg, existing_run

WatchOpt = Annotated[bool, typer.Option("--watch", "-w", help="Refresh the screen in place until Ctrl-C.")]
IntervalOpt = Annotated[float, typer.Option("--interval", help="Seconds between refreshes with --watch.")]


def screen_text(run, now: float, config=None) -> str:
    """One refresh: the screen of ``run`` at ``now`` (what ``--watch`` shows each time); ``config``: the
    detectors' settings (default: the run's own)."""
    from bigops.status.facts import collect
    from bigops.status.render import lines
    from bigops.status.summary import summarize
    return "\n".join(lines(summarize(collect(run, now, config), now)))


def status(
    run_dir: RunDirArg,
    output_format: FormatOpt = OutputFormat.text,
    watch: WatchOpt = False,
    interval: IntervalOpt = 5.0,
) -> None:
    """Run state, problems (with their age and what was done), step and ETA, loss trend, checkpoint health,
    ranks (the odd ones named), pending approvals, where the TensorBoard logs are (read-only)."""
    from bigops.errors import ConfigError

    run = existing_run(run_dir)
    if watch and output_format == OutputFormat.json:
        raise ConfigError("--watch refreshes the screen; --format json prints one document: choose one")
    if not (interval > 0 and interval < 86400):
        raise ConfigError(f"--interval {interval}: must be > 0 and < 86400 seconds")
    if output_format == OutputFormat.json:
        from bigops.status.facts import collect
        from bigops.status.render import document
        from bigops.status.summary import summarize
        now = time.time()
        typer.echo(json.dumps(document(summarize(collect(run, now), now)), default=str, allow_nan=False))
        return
    if not watch:
        typer.echo(screen_text(run, time.time()))
        return
    _watch(run, interval)


def _watch(run, interval: float) -> None:
    """Refresh in place (rich Live) until Ctrl-C, which ends it normally."""
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    console = Console(highlight=False)
    try:
        with Live(console=console, auto_refresh=False, transient=False) as live:
            while True:
                live.update(Text(screen_text(run, time.time())), refresh=True)
                time.sleep(interval)
    except KeyboardInterrupt:
        pass
