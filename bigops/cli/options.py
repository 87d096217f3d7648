"""Option aliases shared by several commands (``Annotated`` types, as in huggingface_hub's CLI)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

RunDirArg = Annotated[Path, typer.Argument(help="The run directory (holds run.toml, checkpoints/, telemetry/).",
                                           show_default=False)]
TagOpt = Annotated[Optional[str], typer.Option("--tag", help="Checkpoint tag; default: the one `latest` names.")]
PresetOpt = Annotated[str, typer.Option("--preset", help="Model/parallelism preset: tiny, bloom-560m, bloom-1b7, "
                                                         "bloom-7b1, bloom-176b.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override one option, e.g. "
                                                                   "--set model.hidden_size=96 (repeatable).")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="A TOML file of options ([model], [parallel], "
                                                                    "[train]) applied on top of the preset.")]
