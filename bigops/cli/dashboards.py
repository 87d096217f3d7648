"""``bigops dashboards``: write and check the Grafana dashboards (and the other generated ops files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from bigops.cli.options import ForceOpt, make_app

app = make_app("Grafana dashboards: export them as JSON, check a dashboard file offline.")


@app.command("export")
def export(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write into (created if missing).", show_default=False)],
    all_files: Annotated[bool, typer.Option("--all", help="Write every generated file under OUT_DIR as the "
                                            "repository lays them out: dashboards/ (Grafana, rules, rule tests, "
                                            "Prometheus and Alertmanager examples) and runbooks/.")] = False,
    force: ForceOpt = False,
) -> None:
    """Write the run-overview and cluster-health dashboards (Grafana 10+ JSON) into OUT_DIR."""
    from bigops.dashboards import grafana
    from bigops.dashboards.generate import write_all, write_generated

    if all_files:
        written = write_all(out_dir, force=force)
    else:
        written = write_generated({out_dir / name: json.dumps(build(), indent=2) + "\n"
                                   for name, build in grafana.DASHBOARDS.items()}, force)
    for path in written:
        typer.echo(f"wrote {path}")


@app.command("check")
def check(
    files: Annotated[list[Path], typer.Argument(help="Dashboard JSON files.", show_default=False)],
) -> None:
    """Check dashboards offline: pinned schema version, grid, ids, variables, Grafana's own model (exit 1 on
    any problem, one line each)."""
    from bigops.dashboards.check import problems
    from bigops.errors import BigopsError

    bad = 0
    for path in files:
        try:
            board = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise BigopsError(f"{path}: {exc}") from None
        found = problems(board)
        for line in found:
            typer.echo(f"{path}: {line}")
        bad += len(found)
        if not found:
            typer.echo(f"{path}: ok ({len(board.get('panels', []))} panels)")
    if bad:
        raise BigopsError(f"{bad} problem(s)")
