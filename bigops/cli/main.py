"""``bigops``: the entry point. Known errors become one line on stderr and an exit code (``bigops.exitcodes``);
set ``BIGOPS_DEBUG=1`` to see the full traceback instead."""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console

from bigops import __version__, exitcodes
from bigops.cli import alerts, approve, chain, ckpt, dashboards, data, goodput, gpu, launch, plot, stacks, status, \
    surgery, watch
from bigops.cli.options import make_app
from bigops.cli.streams import library_output_on_stderr
from bigops.errors import KNOWN_ERRORS, exit_code_of

PROG = "bigops"
app = make_app("Keep a long LLM pre-training run alive: launch a DeepSpeed 3D-parallel BLOOM, watch it, repair it.",
               name=PROG, add_completion=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)  # one error = one line


@app.command()
def version() -> None:
    """Print the bigops version and those of its engines (torch, deepspeed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as pkg_version

    def ver(name: str) -> str:
        try:
            return pkg_version(name)
        except PackageNotFoundError:
            return "not installed"
    typer.echo(f"bigops {__version__} (torch {ver('torch')}, deepspeed {ver('deepspeed')}, "
               f"python {sys.version.split()[0]})")


app.command(name="launch")(launch.launch)
app.command(name="status")(status.status)
app.command(name="goodput")(goodput.goodput)
app.command(name="plot")(plot.plot)
app.command(name="watch")(watch.watch)
app.command(name="approve")(approve.approve)
app.command(name="deny")(approve.deny)
app.command(name="gpu-monitor")(gpu.gpu_monitor)
app.command(name="stacks")(stacks.stacks)
app.command(name="surgery")(surgery.surgery)
app.add_typer(ckpt.app, name="ckpt")
app.add_typer(alerts.app, name="alerts")
app.add_typer(dashboards.app, name="dashboards")
app.add_typer(chain.app, name="chain")
app.add_typer(data.app, name="data")


def _usage_error(exc: typer.TyperException) -> int:
    """Typer's (click's) own usage errors: one line with where to look, or a bare group's help."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        exc.show()
        return exitcodes.USAGE
    if not hasattr(exc, "format_message"):
        err_console.print(f"error: {exc}", markup=False)
        return exitcodes.USAGE
    ctx = getattr(exc, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    err_console.print(f"error: {exc.format_message()}{hint}", markup=False)
    return getattr(exc, "exit_code", exitcodes.USAGE)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; map known errors to one line + exit code (``bigops.errors.exit_code_of``)."""
    try:
        with library_output_on_stderr():  # stdout is the command's result (a JSON document with --format json)
            # prog_name: the usage lines, the hints and the completion variable (_BIGOPS_COMPLETE) say
            # bigops however it was started (the console script, python -m bigops.cli.main, a test).
            result = app(args=argv, prog_name=PROG, standalone_mode=False)
        # Without standalone mode, Typer returns a typer.Exit's code instead of raising it.
        return result if isinstance(result, int) else exitcodes.OK
    except SystemExit as exc:  # typer.Exit inside commands
        return int(exc.code or 0)
    except typer.Exit as exc:
        return exc.exit_code
    except (KeyboardInterrupt, typer.Abort) as exc:
        err_console.print("interrupted" if isinstance(exc, KeyboardInterrupt) else "aborted")
        return exitcodes.INTERRUPTED
    except typer.TyperException as exc:
        if os.environ.get("BIGOPS_DEBUG"):
            raise
        return _usage_error(exc)
    except KNOWN_ERRORS as exc:
        if os.environ.get("BIGOPS_DEBUG"):
            raise
        err_console.print(f"error: {exc}", markup=False)
        return exit_code_of(exc)
    except Exception as exc:  # noqa: BLE001 - the one place that turns errors into exit codes
        if os.environ.get("BIGOPS_DEBUG"):
            raise
        err_console.print(f"error: unexpected {type(exc).__name__}: {exc} "
                          f"(run with BIGOPS_DEBUG=1 for the traceback)", markup=False)
        return exitcodes.FAILURE


if __name__ == "__main__":
    sys.exit(main())
