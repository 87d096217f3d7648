"""What every command group shares: the Typer app factory and the option aliases (``Annotated`` types, as in
huggingface_hub's first ``hf`` CLI). An option used by two commands is declared here, once, with its help.

Help texts are Rich markup: a literal ``[word]`` (a TOML table, ``[user@]``) is written ``\\[word]``, or Rich
takes it for a style and drops it (``tests/unit/test_cli.py`` renders every help and looks for each one)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


def make_app(help: str, add_completion: bool = False, **settings) -> typer.Typer:
    """A command group (or the root app) with bigops' settings: help on a bare call, no Typer-styled
    tracebacks (``main()`` owns errors); only the root app asks for ``--install-completion`` and
    ``--show-completion`` (Typer adds them to the app that has them, and a group's would repeat the root's)."""
    return typer.Typer(help=help, no_args_is_help=True, pretty_exceptions_enable=False,
                       add_completion=add_completion, **settings)


class OutputFormat(str, Enum):
    """``--format``: tables and lines for people, or JSON for scripts."""

    text = "text"
    json = "json"


class Severity(str, Enum):
    """``alerts test --severity``: the notifier's severities (``bigops.notify.notifier.SEVERITY_ORDER``)."""

    info = "info"
    warning = "warning"
    critical = "critical"


class ExportDtype(str, Enum):
    """``ckpt export-hf --dtype``: the training precision, or one of ``bigops.checkpoint.export_hf.DTYPES``."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class SyncMethod(str, Enum):
    """``surgery --method``: how TP-duplicated tensors are made equal (``checkpoint.surgery.sync_layernorm_edit``)."""

    mean = "mean"
    rank0 = "rank0"


# ------------------------------------------------------------------------------------------------ the run
RunDirArg = Annotated[Path, typer.Argument(help="The run directory (holds run.toml, checkpoints/, telemetry/).",
                                           show_default=False)]
TagOpt = Annotated[Optional[str], typer.Option("--tag", help="Checkpoint tag; default: the one `latest` names.")]

# ----------------------------------------------------------------------------------------------- its config
PresetOpt = Annotated[str, typer.Option("--preset", help="Model/parallelism preset: tiny, bloom-560m, bloom-1b7, "
                                                         "bloom-7b1, bloom-176b.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override one option, e.g. "
                                                                   "--set model.hidden_size=96 (repeatable).")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="A TOML file of options (\\[model], \\[parallel], "
                                                                    "\\[train]) applied on top of the preset.")]

# ------------------------------------------------------------------------------------- output, destructive
FormatOpt = Annotated[OutputFormat, typer.Option("--format", case_sensitive=False,
                                                 help="text (for people) or json (one object, for scripts).")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Say what would be done; change nothing.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite files that exist (without it, nothing is "
                                        "written when one does: exit code 4).")]

# ------------------------------------------------------------------------------------------------ SSH (SLURM)
HostOpt = Annotated[Optional[str], typer.Option("--host", help="Run SLURM's commands on this login node over SSH: "
                                                "\\[user@]host[:port] (key auth, known_hosts checked, never added).")]
SSHKeyOpt = Annotated[Optional[str], typer.Option("--ssh-key", help="Private key file for --host.")]
KnownHostsOpt = Annotated[Optional[str], typer.Option("--known-hosts", help="known_hosts file for --host "
                                                      "(default ~/.ssh/known_hosts).")]


def existing_run(run_dir: Path):
    """The ``RunDirArg`` of a command that reads or steers a run: it must exist (a ConfigError, exit code 2,
    names it otherwise). Checkpoint tools check more, and say so with their own error (exit code 3)."""
    from bigops.errors import ConfigError
    from trainer.rundir import RunDir
    run = RunDir(Path(run_dir))
    if not run.root.is_dir():
        raise ConfigError(f"{run.root} is not a run directory")
    return run
