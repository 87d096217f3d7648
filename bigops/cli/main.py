"""``bigops``: the entry point. Known errors become one line on stderr and an exit code (``bigops.exitcodes``);
set ``BIGOPS_DEBUG=1`` to see the full traceback instead."""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console

from bigops import __version__, exitcodes
from bigops.errors import BigopsError, ConfigError, HFCheckpointError

app = typer.Typer(
    name="bigops",
    help="Keep a long LLM pre-training run alive: launch a DeepSpeed 3D-parallel BLOOM, watch it, repair it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
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


def _register() -> None:
    from bigops.cli import approve, ckpt, gpu, launch, status, watch
    app.command(name="launch")(launch.launch)
    app.command(name="status")(status.status)
    app.command(name="watch")(watch.watch)
    app.command(name="approve")(approve.approve)
    app.command(name="deny")(approve.deny)
    app.command(name="gpu-monitor")(gpu.gpu_monitor)
    app.add_typer(ckpt.app, name="ckpt")
    from bigops.cli import surgery
    app.command(name="surgery")(surgery.surgery)
    ckpt.app.command(name="compare-tp")(surgery.compare_tp_command)
    from bigops.cli import alerts, dashboards
    app.add_typer(alerts.app, name="alerts")
    app.add_typer(dashboards.app, name="dashboards")
    from bigops.cli import chain
    app.add_typer(chain.app, name="chain")


_register()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; map known errors to one line + exit code."""
    try:
        result = app(args=argv, standalone_mode=False)
        # Without standalone mode, Typer returns a typer.Exit's code instead of raising it.
        return result if isinstance(result, int) else exitcodes.OK
    except SystemExit as exc:  # typer.Exit inside commands
        return int(exc.code or 0)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return exitcodes.INTERRUPTED
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        err_console.print("aborted")
        return exitcodes.INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the one place that turns errors into exit codes
        if os.environ.get("BIGOPS_DEBUG"):
            raise
        if isinstance(exc, typer.TyperException) and hasattr(exc, "format_message"):
            if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: show its help
                exc.show()
                return exitcodes.USAGE
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            err_console.print(f"error: {exc.format_message()}{hint}", markup=False)
            return getattr(exc, "exit_code", exitcodes.USAGE)
        from trainer.checkpoint import CheckpointError as TrainerCheckpointError
        if isinstance(exc, (ConfigError, HFCheckpointError)):
            code = exitcodes.USAGE
        elif isinstance(exc, TrainerCheckpointError):
            code = exitcodes.CHECKPOINT
        elif isinstance(exc, BigopsError):
            code = exc.exit_code
        elif isinstance(exc, OSError):
            code = exitcodes.FAILURE
        else:
            err_console.print(f"error: unexpected {type(exc).__name__}: {exc} "
                              f"(run with BIGOPS_DEBUG=1 for the traceback)", markup=False)
            return exitcodes.FAILURE
        err_console.print(f"error: {exc}", markup=False)
        return code


if __name__ == "__main__":
    sys.exit(main())
