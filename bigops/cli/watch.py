"""``bigops watch``: the watchdog daemon over a run directory."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from bigops.cli.options import RunDirArg


def watch(
    run_dir: RunDirArg,
    once: Annotated[bool, typer.Option("--once", help="One pass, then exit (for cron or a test).")] = False,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between passes.")] = 10.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Decide, record, but take no action.")] = False,
    output_format: Annotated[str, typer.Option("--format", help="text or json (one object per finding).")] = "text",
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
    sees, and takes over as the writer when that one is gone."""
    from bigops.errors import ConfigError
    from bigops.watchdog.daemon import one_line, state_path, tick
    from bigops.watchdog.state import WatchState
    from trainer.rundir import RunDir

    if output_format not in ("text", "json"):
        raise ConfigError(f"--format {output_format!r}: use text or json")
    if interval <= 0:
        raise ConfigError(f"--interval {interval}: must be positive")
    run = RunDir(Path(run_dir))
    if not run.root.is_dir():
        raise ConfigError(f"{run.root} is not a run directory")
    from bigops.watchdog.lock import LockHeld, WriterLock, describe
    lock = WriterLock(run, "watch")
    try:
        lock.acquire()
    except LockHeld as held:
        typer.echo(f"observing: {describe(held.holder) if held.holder else 'another watchdog'} is the writer of "
                   f"{run.root} (this watch detects and exports, and neither notifies nor acts)", err=True)
    state = WatchState.load(state_path(run))
    notifier = _notifier(run) if lock.held else None
    if notifier is not None:
        notifier.resend_pending()
    from trainer.rundir import pid_alive
    from bigops.watchdog.supervisor import watch_config
    config = watch_config(_run_config(run), alive=pid_alive)  # standalone: nobody else watches the pids
    collector = None
    if metrics_port:
        from bigops.metrics.exporter import RunCollector, serve
        collector = RunCollector(run.root.resolve().name, run_dir=run.root)
        try:
            serve(collector, metrics_port, metrics_address)
        except OSError as exc:
            raise ConfigError(f"--metrics-port {metrics_port}: cannot listen on {metrics_address} ({exc.strerror})") from None
    while True:
        now = time.time()
        if not lock.held:
            try:
                lock.acquire(now)
                typer.echo(f"the writer of {run.root} is gone: this watch is the writer now", err=True)
                state, notifier = WatchState.load(state_path(run)), _notifier(run)
                notifier.resend_pending()
            except LockHeld:
                pass
        lock.renew(now)
        new, facts = tick(run, state, now=now, dry_run=dry_run, notifier=notifier, config=config,
                          observe=not lock.held)
        if collector is not None:
            collector.update(facts, facts["findings"], new, now)
        for finding in new:
            typer.echo(json.dumps(finding.as_dict()) if output_format == "json" else one_line(finding))
        if output_format == "text":
            for line in facts.get("actions", []):
                typer.echo(line)
        if once:
            if notifier is not None:
                notifier.drain()
            lock.release()
            return
        time.sleep(interval)


def _run_config(run):
    """run.toml's tree (defaults when the run has none yet)."""
    from trainer.rundir import load_run_config
    return load_run_config(run, missing_ok=True)


def _notifier(run):
    """The channels of run.toml's [alerts] (none when the run has no run.toml yet), with the run's outbox
    (``watchdog/outbox/``: pages kept until delivered; the writer calls ``resend_pending`` once)."""
    from bigops.errors import ConfigError
    from bigops.notify.notifier import from_config
    from bigops.notify.outbox import Outbox
    from bigops.notify.secrets import SecretError
    from trainer.rundir import append_event

    alerts = _run_config(run).alerts
    try:
        return from_config(alerts, run.root.resolve().name, on_result=lambda r: append_event(run, r),
                           outbox=Outbox(run.outbox))
    except SecretError as exc:
        raise ConfigError(str(exc)) from None
