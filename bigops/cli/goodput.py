"""``bigops goodput RUN``: the run's wall time split into productive training and each loss, per incident, and
the checkpoint interval that maximises goodput (read-only: ``bigops.goodput`` reads and computes)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from bigops.cli.options import FormatOpt, OutputFormat, RunDirArg, existing_run

TimelineOpt = Annotated[bool, typer.Option("--timeline", help="With --format json: every span of the timeline too.")]


def goodput(run_dir: RunDirArg, output_format: FormatOpt = OutputFormat.text, timeline: TimelineOpt = False) -> None:
    """Wall time split into productive training, work lost to restarts and rollbacks, restart overhead,
    checkpoint stalls, slow periods and SLURM queue time (they sum to the wall time), what each incident cost,
    and the optimal checkpoint interval (Young/Daly) for the measured failure rate and save cost."""
    from bigops.errors import ConfigError
    from bigops.goodput import facts, report

    run = existing_run(run_dir)
    records = facts.read_records(run)
    if not records.steps:
        raise ConfigError(f"{run.root}: no step recorded yet ({run.metrics} is empty or missing): nothing to account")
    r = report.build(str(run.root), records, facts.save_interval(run))
    if output_format == OutputFormat.json:
        typer.echo(json.dumps(report.document(r, timeline=timeline), allow_nan=False))
        return
    typer.echo("\n".join(report.lines(r)))
