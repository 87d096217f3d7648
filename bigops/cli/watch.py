"""``bigops watch``: the watchdog daemon over a run directory."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from bigops.cli.options import DryRunOpt, FormatOpt, OutputFormat, RunDirArg, existing_run


def watch(
    run_dir: RunDirArg,
    once: Annotated[bool, typer.Option("--once", help="One pass, then exit (for cron or a test).")] = False,
    interval: Annotated[Optional[float], typer.Option(
        "--interval", help="Seconds between passes (default: the run's watchdog.interval_s).")] = None,
    dry_run: DryRunOpt = False,
    output_format: FormatOpt = OutputFormat.text,
    metrics_port: Annotated[int, typer.Option("--metrics-port", help="Serve Prometheus metrics on this port "
                                              "(0: off).")] = 0,
    metrics_address: Annotated[str, typer.Option("--metrics-address", help="Address to serve metrics on.")]
    = "127.0.0.1",
) -> None:
    """Watch a run: detect loss spikes, NaNs, hangs, dead ranks, stragglers, slowdowns, TP desync and full
    disks; one incident per problem in events.jsonl, one line each here; request live layer-norm syncs
    (watchdog.on_desync) and carry out the ones approved with `bigops approve`. Exit code 0; findings are
    not errors.

    One process per run is its writer (it notifies and acts). When another watchdog is (`bigops launch
    --watch`, or a `bigops watch` started earlier), this one observes: it prints and exports what it
    sees, and takes over as the writer when that one is gone. With --dry-run it decides and records, but takes
    no action; with --format json it prints one object per finding."""
    from bigops.errors import ConfigError
    from bigops.metrics.exporter import serve_run
    from bigops.watchdog.daemon import watch_run

    if interval is not None and interval <= 0:
        raise ConfigError(f"--interval {interval}: must be positive")
    run = existing_run(run_dir)
    collector = serve_run(run, metrics_port, metrics_address) if metrics_port else None
    watch_run(run, interval, once=once, dry_run=dry_run, collector=collector,
              on_pass=lambda new, facts: _print_pass(new, facts, output_format),
              say=lambda line: typer.echo(line, err=True))


def _print_pass(new: list, facts: dict, output_format: OutputFormat) -> None:
    """One pass's output: a line (or a JSON object) per new finding, then, as text, the actions taken."""
    from bigops.watchdog.daemon import one_line
    for finding in new:
        typer.echo(json.dumps(finding.as_dict()) if output_format == OutputFormat.json else one_line(finding))
    if output_format == OutputFormat.text:
        for line in facts.get("actions", []):
            typer.echo(line)
