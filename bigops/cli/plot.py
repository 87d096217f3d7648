"""``bigops plot``: a PNG of a run (loss, grad norm, learning rate, tokens/s; incidents, rollbacks, restarts and
kills marked), another run or a TensorBoard log overlaid. matplotlib and TensorBoard are imported by the
command, not at CLI start (``bigops --help`` loads no engine)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from bigops.cli.options import ForceOpt, FormatOpt, OutputFormat, RunDirArg, existing_run

DEFAULT_NAME = "plot.png"
CompareOpt = Annotated[Optional[Path], typer.Option(
    "--compare", help="Overlay another run directory, or a TensorBoard log directory read by Megatron-DeepSpeed's "
                      "tag names (lm-loss-training/lm loss, grad-norm/grad-norm, learning-rate/learning-rate).")]
OutputOpt = Annotated[Optional[Path], typer.Option("--output", "-o",
                                                   help=f"The PNG to write; default RUN/{DEFAULT_NAME}.")]


def plot(
    run_dir: RunDirArg,
    compare: CompareOpt = None,
    output: OutputOpt = None,
    force: ForceOpt = False,
    output_format: FormatOpt = OutputFormat.text,
) -> None:
    """Write a PNG of the run's curves against the step, with the watchdog's incidents and actions marked."""
    from bigops.errors import OutputExistsError
    from bigops.plot.data import figure_data
    from bigops.plot.render import write_png
    from bigops.plot.sources import read_run, read_source

    run = existing_run(run_dir)
    target = Path(output) if output is not None else run.root / DEFAULT_NAME
    if target.exists() and not force:
        raise OutputExistsError(f"{target} exists: pass --force to overwrite it")
    main = read_run(run.root)
    other = read_source(compare) if compare is not None else None
    data = figure_data(main, other)
    write_png(data, target)
    if output_format == OutputFormat.json:
        typer.echo(json.dumps({"output": str(target), "steps": main.steps, "markers": len(data.markers),
                               "compare": None if other is None else {"label": other.label, "steps": other.steps},
                               "panels": {k: [s.label for s in v] for k, v in data.panels.items()}}))
        return
    against = f"; compared with {other.label} ({other.steps} steps)" if other is not None else ""
    typer.echo(f"wrote {target} ({main.steps} steps, {len(data.markers)} markers{against})")
